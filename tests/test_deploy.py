"""The deployment files at the root say what each platform needs: read here as the platforms read them.

The Dockerfile (slim base, two stages, a user without privileges, a health check, the command),
.dockerignore, compose.yaml, render.yaml, fly.toml, railway.json and the Procfile, and the settings
the guides under docs/deploy/ give where no file can hold them. Each platform's proxy settings are
checked against a request shaped as that platform delivers it. test_deploy_e2e.py runs them.
"""

from __future__ import annotations

import re
import subprocess
from typing import Any

import pytest
from deploy_files import (
    GUIDES,
    PROXY_SETTINGS,
    REQUIRED,
    ROOT,
    SECRETS,
    build_context,
    deployments,
    dockerignore_patterns,
    env_file,
    exec_form,
    healthcheck_command,
    ignored,
    load_compose,
    load_fly,
    load_railway,
    parse_dockerfile,
    procfile,
    read_dockerfile,
    render_service,
    stages,
)
from harness import KEY, ORIGIN, SECRET

from llmguard import Settings
from llmguard._cli import DEFAULT_PORT
from llmguard._client_ip import ClientIP

DEPLOYMENTS = {deployment.name: deployment for deployment in deployments()}
OPERATOR = {"OPENAI_API_KEY": KEY, "JWT_SECRET": SECRET, "ALLOWED_ORIGIN": ORIGIN}


# -- the Dockerfile -----------------------------------------------------------------------


def test_the_dockerfile_reader_joins_continuations_and_skips_comments() -> None:
    text = (
        "# syntax=docker/dockerfile:1\n"
        "ARG V=3.12\n"
        "FROM python:${V}-slim AS build\n"
        "ENV A=1 \\\n"
        "    # a comment between continuation lines\n"
        '    B="two words"\n'
        "RUN echo $A \\\n"
        " && echo $B\n"
        "\n"
        "FROM python:$V-slim\n"
        'CMD ["llmguard", "serve"]\n'
    )
    build, runtime = stages(parse_dockerfile(text))
    assert (build.base, build.name, runtime.base, runtime.name) == (
        "python:3.12-slim",
        "build",
        "python:3.12-slim",
        None,
    )
    assert build.env() == {"A": "1", "B": "two words"}
    (run,) = build.all("RUN")
    assert run.arguments == "echo $A  && echo $B"
    assert run.line == 7
    assert exec_form(runtime.all("CMD")[0].arguments) == ["llmguard", "serve"]
    with pytest.raises(ValueError, match="ends inside"):
        parse_dockerfile("FROM x\nRUN a \\\n")


def test_the_image_is_slim_python_3_12_built_in_two_stages() -> None:
    build, runtime = read_dockerfile()
    # The virtualenv the runtime stage copies points at the build stage's interpreter: the same image.
    assert build.base == runtime.base == "python:3.12-slim"
    assert build.name is not None
    assert runtime.all("RUN"), "the runtime stage only adds its user"
    assert not any("pip" in run.arguments for run in runtime.all("RUN")), "nothing is installed in the runtime stage"
    (copy,) = runtime.all("COPY")
    assert copy.options()[0] == {"from": build.name}


def test_the_image_runs_as_a_user_without_privileges() -> None:
    _, runtime = read_dockerfile()
    keywords = [instruction.keyword for instruction in runtime.instructions]
    last_user = len(keywords) - 1 - keywords[::-1].index("USER")
    assert last_user < keywords.index("CMD"), "USER comes before CMD"
    user, _, group = runtime.instructions[last_user].arguments.partition(":")
    # Numeric, so that Kubernetes' runAsNonRoot can check it; and not root.
    assert user.isdigit()
    assert user != "0"
    assert group != "0"
    (adduser,) = [run.arguments for run in runtime.all("RUN") if "useradd" in run.arguments]
    assert f"--uid {user}" in adduser
    assert f"--gid {group}" in adduser or "--gid llmguard" in adduser
    assert "--shell /usr/sbin/nologin" in adduser


def test_the_image_checks_its_health_on_healthz_with_python() -> None:
    _, runtime = read_dockerfile()
    health = runtime.last("HEALTHCHECK")
    assert health is not None
    options, _ = health.options()
    assert set(options) >= {"interval", "timeout", "start-period", "retries"}
    argv = healthcheck_command(health)
    # Exec form, with Python's urllib: slim images have neither curl nor wget.
    assert argv[:2] == ["python", "-c"]
    code = argv[2]
    compile(code, "HEALTHCHECK", "exec")
    assert "urllib.request" in code
    assert "/healthz" in code
    assert "PORT" in code, "the health check follows the port the server listens on"


def test_the_image_serves_llmguard_on_every_interface() -> None:
    _, runtime = read_dockerfile()
    cmd = runtime.last("CMD")
    assert cmd is not None
    assert cmd.exec_form() == ["llmguard", "serve"]
    assert runtime.last("ENTRYPOINT") is None
    env = runtime.env({"PATH": "/usr/local/bin"})
    assert env["HOST"] == "0.0.0.0"  # noqa: S104  # a container is reached through its published port
    assert env["PYTHONDONTWRITEBYTECODE"] == env["PYTHONUNBUFFERED"] == "1"
    assert env["PATH"] == f"{env['VIRTUAL_ENV']}/bin:/usr/local/bin"
    assert "PORT" not in env, "PORT is the platform's to set; the server falls back to 8000"
    (expose,) = runtime.all("EXPOSE")
    assert expose.arguments == str(DEFAULT_PORT)
    # No secret is baked into the image.
    names = set(env) | {arg.arguments.partition("=")[0] for stage in read_dockerfile() for arg in stage.all("ARG")}
    assert not names & set(REQUIRED)


def test_the_build_installs_the_package_with_its_extras_and_keeps_no_pip_cache() -> None:
    build, _ = read_dockerfile()
    installs = [run.arguments for run in build.all("RUN") if "pip" in run.arguments and " install" in run.arguments]
    assert len(installs) == 1
    assert "--no-cache-dir" in installs[0]
    assert '".[redis,speed]"' in installs[0]
    # Into the virtualenv the runtime stage copies, which holds no pip of its own.
    assert 'python -m venv --without-pip "$VIRTUAL_ENV"' in installs[0]
    assert '--python "$VIRTUAL_ENV/bin/python" install' in installs[0]


def test_the_build_context_holds_what_the_build_copies_and_nothing_else() -> None:
    context = set(build_context())
    tracked = subprocess.run(["git", "ls-files", "llmguard"], cwd=ROOT, capture_output=True, text=True, check=True)
    package = set(tracked.stdout.split())
    assert package
    assert package <= context
    assert context - package <= {"pyproject.toml", "README.md", "LICENSE"} | {
        name for name in context if name.startswith("llmguard/") and "__pycache__" not in name
    }
    patterns = dockerignore_patterns()
    for secret in [".env", ".env.local", ".git/config", ".venv/bin/python", "js/node_modules/a.js", "tests/a.py"]:
        assert ignored(secret, patterns), secret
    assert ignored("llmguard/__pycache__/_app.cpython-312.pyc", patterns)
    assert not ignored("llmguard/static/sdk.js", patterns)


# -- the platforms' files -------------------------------------------------------------------


def test_compose_runs_the_image_with_redis_and_waits_for_it() -> None:
    services = load_compose()["services"]
    llmguard, redis = services["llmguard"], services["redis"]
    assert llmguard["build"] == "."
    assert llmguard["env_file"] == ".env"
    assert llmguard["environment"]["STORAGE_URL"] == "redis://redis:6379/0"
    assert llmguard["depends_on"] == {"redis": {"condition": "service_healthy"}}
    # The published port's container side is the one the server listens on without PORT.
    assert DEPLOYMENTS["compose"].port == DEFAULT_PORT
    assert "PORT" not in llmguard["environment"]
    # Plain HTTP stays on loopback until a proxy is put in front.
    assert str(llmguard["ports"][0]).startswith("127.0.0.1:")

    assert redis["image"] == "redis:7-alpine"
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert "ports" not in redis, "Redis is reached by the project's services only"
    command = " ".join(redis["command"])
    assert "--maxmemory-policy noeviction" in command
    assert "--appendonly yes" in command
    assert any(volume.endswith(":/data") for volume in redis["volumes"])


def test_render_builds_the_image_asks_for_the_secrets_and_wires_key_value() -> None:
    web, store = render_service("web"), render_service("keyvalue")
    assert web["runtime"] == "docker"
    assert web["dockerfilePath"] == "./Dockerfile"
    assert web["healthCheckPath"] == "/healthz"
    assert "dockerCommand" not in web, "the image's CMD"
    variables: dict[str, dict[str, Any]] = {item["key"]: item for item in web["envVars"]}
    for name in REQUIRED:
        assert variables[name] == {"key": name, "sync": False}
    assert variables["STORAGE_URL"]["fromService"] == {
        "type": "keyvalue",
        "name": store["name"],
        "property": "connectionString",
    }
    assert store["maxmemoryPolicy"] == "noeviction"
    assert store["ipAllowList"] == []
    assert store["plan"] != "free", "the free plan keeps no data on disk: the monthly caps would reset"


def test_fly_builds_the_image_routes_to_its_port_and_checks_healthz() -> None:
    fly = load_fly()
    assert fly["build"]["dockerfile"] == "Dockerfile"
    assert "app" not in fly, "fly launch names the app"
    service = fly["http_service"]
    assert service["internal_port"] == int(fly["env"]["PORT"])
    assert service["force_https"] is True
    (check,) = service["checks"]
    assert (check["method"], check["path"]) == ("GET", "/healthz")
    assert not set(fly["env"]) & set(REQUIRED), "secrets go through fly secrets set"


def test_railway_builds_the_image_and_the_procfile_serves_on_every_interface() -> None:
    railway = load_railway()
    assert railway["build"] == {"builder": "DOCKERFILE", "dockerfilePath": "Dockerfile"}
    assert railway["deploy"]["healthcheckPath"] == "/healthz"
    assert "startCommand" not in railway["deploy"], "the image's CMD"
    assert procfile() == {"web": "llmguard serve --host 0.0.0.0"}


def test_the_env_example_names_what_a_deployment_needs_and_holds_no_secret() -> None:
    example = env_file(ROOT / ".env.example")
    assert set(REQUIRED) | set(PROXY_SETTINGS) <= set(example)
    assert all(example[name] == "" for name in SECRETS)
    ignored_by_git = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=ROOT, check=False)
    assert ignored_by_git.returncode == 0, ".env is never committed"


@pytest.mark.parametrize("name", sorted(DEPLOYMENTS))
def test_each_deployment_asks_for_the_secrets_and_its_settings_are_valid(name: str) -> None:
    deployment = DEPLOYMENTS[name]
    assert set(SECRETS) <= deployment.asks
    assert not set(SECRETS) & set(deployment.env)
    # What the platform starts with the operator's values: llmguard accepts it.
    settings = Settings.from_env(deployment.env | OPERATOR)
    if deployment.redis is not None:
        assert settings.storage_url.startswith("redis://")


# -- who the client is, behind each platform's proxy ------------------------------------------

VISITOR = "198.51.100.7"
FORGED = "203.0.113.9"

# A request as each platform's proxy delivers it, with a client that forged every header it could.
PLATFORM_REQUESTS: dict[str, tuple[str, list[tuple[str, str]]]] = {
    # Fly Proxy connects from 172.16.0.0/12 and replaces Fly-Client-IP; X-Forwarded-For ends with the
    # app's own anycast address (fly.io/docs/networking/request-headers).
    "fly": (
        "172.19.7.2",
        [("fly-client-ip", VISITOR), ("x-forwarded-for", f"{FORGED}, {VISITOR}, 2a09:8280:1::af:1aa1:0")],
    ),
    # Cloudflare, then Render's proxy from 10.x: True-Client-IP and CF-Connecting-IP are set by
    # Cloudflare; X-Forwarded-For's last public entry is Cloudflare's edge (observed on Render).
    "render": (
        "10.21.157.68",
        [
            ("true-client-ip", VISITOR),
            ("cf-connecting-ip", VISITOR),
            ("x-forwarded-for", f"{FORGED},{VISITOR}, 172.71.95.118, 10.19.64.237"),
        ],
    ),
    # Railway's edge connects from 100.64.0.0/10, replaces X-Real-IP and rewrites X-Forwarded-For to
    # "<client>, <edge>", whose last entry changes with every request (observed on Railway).
    "railway": ("100.64.0.3", [("x-real-ip", VISITOR), ("x-forwarded-for", f"{VISITOR}, 79.127.151.146")]),
    # Google's front end reaches the container from a link-local address and appends the client.
    "cloud-run": ("169.254.8.129", [("x-forwarded-for", f"{FORGED}, {VISITOR}")]),
}


def client_of(settings: Settings, peer: str, headers: list[tuple[str, str]]) -> str:
    async def unreachable(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("only resolve() is called")

    client_ip = ClientIP(unreachable, **settings.arguments("ClientIP"))
    scope = {
        "type": "http",
        "client": (peer, 443),
        "headers": [(name.encode(), value.encode()) for name, value in headers],
    }
    return client_ip.resolve(scope)


@pytest.mark.parametrize("platform", sorted(PLATFORM_REQUESTS))
def test_behind_each_platform_the_client_is_the_visitor_whatever_it_forged(platform: str) -> None:
    settings = Settings.from_env(DEPLOYMENTS[platform].env | OPERATOR)
    peer, headers = PLATFORM_REQUESTS[platform]
    assert client_of(settings, peer, headers) == VISITOR
    # The same headers sent straight to the service, not through the platform: the peer is the client.
    assert client_of(settings, "192.0.2.50", headers) == "192.0.2.50"
    # And through the platform with nothing forged: still the visitor.
    honest = [(name, value.replace(f"{FORGED}, ", "").replace(f"{FORGED},", "")) for name, value in headers]
    assert client_of(settings, peer, honest) == VISITOR


def test_without_the_proxy_settings_every_visitor_would_share_the_proxys_bucket() -> None:
    # What the settings are for: the same requests, nothing trusted.
    bare = Settings.from_env(OPERATOR)
    for peer, headers in PLATFORM_REQUESTS.values():
        assert client_of(bare, peer, headers) == peer


# -- the guides ----------------------------------------------------------------------------------

GUIDE_FILES = ["docker.md", "compose.md", "render.md", "fly.md", "cloud-run.md", "railway.md"]


@pytest.mark.parametrize("guide", GUIDE_FILES)
def test_each_guide_names_the_secrets_the_proxy_settings_scaling_and_how_it_was_tested(guide: str) -> None:
    text = (GUIDES / guide).read_text(encoding="utf-8")
    for name in (*REQUIRED, "llmguard keygen", "TRUSTED_PROXIES", "Redis"):
        assert name in text, name
    tested = text.split("## Tested how", 1)[1]
    assert "**Run here:**" in tested
    assert "**Not run here:**" in tested
    # Every fenced block that is not an included file or plain output says why it is not run.
    for match in re.finditer(r"^(.*)\n```(\w+)", text, flags=re.MULTILINE):
        before, language = match.groups()
        if language not in ("json", "text"):
            assert before.strip().startswith("<!-- not run:"), f"{guide}: a {language} block with no reason"
