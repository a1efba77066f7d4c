"""The Dockerfile and each platform's start command, run as their platforms would run them.

No container runtime or image registry exists on the machines that run this suite, so the image
is built outside a container: the Dockerfile's build stage is replayed in a temporary directory
that stands for the image's root. Its COPY instructions copy what .dockerignore lets into the
build context; its RUN instructions run as written, with /bin/sh and the stage's ENV: the
``python`` they call (the base image's) is played by the interpreter running this suite, whose
``-m venv`` makes a clean virtualenv and whose pip installs into it from the package registry. The
runtime stage's ENV, CMD and HEALTHCHECK then run against that virtualenv: every platform's start
command at once, each with the settings its file gives, a real Redis where the file names one,
and the fake provider for OpenAI.

What this cannot show: the base image itself, useradd and the switch to the non-root user, and how
each platform's proxy reaches the container (test_deploy.py checks the proxy settings against what
each platform sends). One build serves the whole module.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
import redis
from deploy_files import (
    REQUIRED,
    ROOT,
    Deployment,
    Instruction,
    Stage,
    build_context,
    deployments,
    env_pairs,
    exec_form,
    healthcheck_command,
    read_dockerfile,
)
from harness import KEY, ORIGIN, SECRET, assert_clean_logs, assert_error, bearer, sse_events
from servers import RedisServer, free_port

from llmguard import Settings
from llmguard.testing import FakeProvider, solve_challenge_payload

# The environment of python:3.12-slim, with the image's root in front of the interpreter's directory.
BASE_PATH = "/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin"
# What reaches the build from this machine: how to reach the registry (its address, proxies, CAs), and
# nothing else of its pip configuration (a local wheel directory, say), which a Docker build would not see.
PASSED_TO_BUILD = (
    "HOME",
    "PIP_INDEX_URL",
    "PIP_EXTRA_INDEX_URL",
    "PIP_TRUSTED_HOST",
    "PIP_CERT",
    "PIP_CLIENT_CERT",
    "PIP_DEFAULT_TIMEOUT",
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
)
TOKENS: list[str] = []


@dataclass(frozen=True)
class Image:
    """The image, built outside a container: ``root`` stands for its ``/``."""

    root: Path
    env: dict[str, str]
    workdir: Path
    command: list[str]
    healthcheck: list[str]

    def resolve(self, argv: list[str]) -> list[str]:
        """``argv`` with its program found on the image's PATH, as the runtime finds it; never outside the image."""
        found = shutil.which(argv[0], path=self.env["PATH"])
        assert found is not None, f"{argv[0]} is not on the image's PATH {self.env['PATH']}"
        assert Path(found).is_relative_to(self.root), f"{argv[0]} resolves to {found}, outside the image"
        return [found, *argv[1:]]


class Rooted:
    """Absolute paths the Dockerfile makes (its WORKDIRs, the paths its ENV names, its COPY targets), under ``root``."""

    def __init__(self, root: Path, stages: list[Stage]) -> None:
        self.root = root
        made = set()
        for stage in stages:
            made |= {instruction.arguments for instruction in stage.all("WORKDIR")}
            for instruction in stage.all("ENV"):
                made |= {value for _, value in env_pairs(instruction.arguments) if re.fullmatch(r"/[\w./-]+", value)}
            for instruction in stage.all("COPY"):
                made |= {word for word in instruction.options()[1].split() if word.startswith("/")}
        self.paths = sorted(made, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for path in self.paths:
            moved = f"{self.root}{path}".replace("\\", "\\\\")  # a replacement string: backslashes escaped
            text = re.sub(rf"(?<![\w/]){re.escape(path)}(?=[/\"':\s]|$)", moved, text)
        return text

    def stage(self, stage: Stage) -> Stage:
        """``stage`` with every instruction's paths moved under the root."""
        moved = [
            Instruction(instruction.keyword, self(instruction.arguments), instruction.line)
            for instruction in stage.instructions
        ]
        return Stage(stage.base, stage.name, moved)


def copy_from_context(sources: list[str], destination: Path, *, into: bool, context: list[str]) -> None:
    """COPY from the build context: a file to ``destination`` (or into it), a directory's files into it."""
    for source in sources:
        source = source.rstrip("/")
        if source in context:
            target = destination / Path(source).name if into else destination
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / source, target)
            continue
        files = [name for name in context if name.startswith(source + "/")]
        assert files, f"COPY {source}: not in the build context (see .dockerignore)"
        for name in files:
            target = destination / Path(name).relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, target)


def build(root: Path, stages: list[Stage]) -> Image:
    """Replay the build stage under ``root``; the image that the runtime stage then describes."""
    assert len(stages) == 2, "a build stage and a runtime stage"
    rooted = Rooted(root, stages)
    build_stage, runtime = (rooted.stage(stage) for stage in stages)
    bin_dir = root / "usr" / "local" / "bin"
    bin_dir.mkdir(parents=True)
    # The image's python, with a pip of its own: the interpreter running this suite plays it (its
    # `-m venv` makes a clean virtualenv on the interpreter it was made from), without the coverage
    # measurement this suite may run under (tests/_markers.py hands it to every subprocess).
    unset = " ".join(f"-u {name}" for name in ("COVERAGE_PROCESS_CONFIG", "COVERAGE_PROCESS_START"))
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec env {unset} {shlex.quote(sys.executable)} "$@"\n')
    (bin_dir / "python").chmod(0o755)
    base = {"PATH": f"{bin_dir}:{BASE_PATH}", "LANG": "C.UTF-8"}
    host = {name: value for name, value in os.environ.items() if name in PASSED_TO_BUILD}
    host["PIP_CONFIG_FILE"] = os.devnull  # none of this machine's pip.conf files

    context = build_context()
    env = dict(base)
    workdir = root
    for instruction in build_stage.instructions:
        if instruction.keyword == "ENV":
            env = Stage(build_stage.base, None, [instruction]).env(env)
        elif instruction.keyword == "WORKDIR":
            workdir = Path(instruction.arguments)
            workdir.mkdir(parents=True, exist_ok=True)
        elif instruction.keyword == "COPY":
            flags, rest = instruction.options()
            assert "from" not in flags, "the build stage copies from the build context only"
            *sources, destination = rest.split()
            into = destination.endswith("/") or len(sources) > 1
            copy_from_context(sources, workdir / destination, into=into, context=context)
        elif instruction.keyword == "RUN":
            assert exec_form(instruction.arguments) is None, "the build's RUN steps are shell commands"
            done = subprocess.run(
                ["/bin/sh", "-c", instruction.arguments],
                cwd=workdir,
                env={**host, **env},
                capture_output=True,
                text=True,
                check=False,
            )
            assert done.returncode == 0, f"RUN on line {instruction.line} failed:\n{done.stdout}\n{done.stderr}"

    for instruction in runtime.all("COPY"):
        flags, rest = instruction.options()
        source, destination = rest.split()
        # The runtime stage copies the virtualenv whole, to the same path: here it is already there.
        assert flags.get("from") == build_stage.name, f"COPY {rest}: from the build stage"
        assert source == destination, "the virtualenv keeps its path (its scripts name their interpreter)"
        assert Path(source).is_dir(), f"COPY --from={build_stage.name}: the build made no {source}"
    cmd, health = runtime.last("CMD"), runtime.last("HEALTHCHECK")
    assert cmd is not None
    assert health is not None
    command = cmd.exec_form()
    assert command is not None, "CMD in exec form: the server is PID 1 and gets the platform's SIGTERM"
    return Image(root, runtime.env(base), root, command, healthcheck_command(health))


# -- running it -------------------------------------------------------------------------------

DEPLOYMENTS = {deployment.name: deployment for deployment in deployments()}
#: What the operator gives each deployment (the platform's secrets), here.
OPERATOR = {"OPENAI_API_KEY": KEY, "JWT_SECRET": SECRET, "ALLOWED_ORIGIN": ORIGIN}


@dataclass(frozen=True)
class Running:
    """One deployment's process, its environment and its log; ``redis`` stands for the platform's Redis."""

    deployment: Deployment
    env: dict[str, str]
    process: subprocess.Popen[bytes]
    log: Path
    redis: RedisServer | None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.env['PORT']}"

    def logs(self) -> str:
        return self.log.read_text(errors="replace")

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"origin": ORIGIN}, timeout=20)


def environment(deployment: Deployment, image: Image, provider_url: str, redis_url: str | None) -> dict[str, str]:
    """The process's environment on the platform: the image's, the file's settings, the operator's
    secrets; here the fake provider stands for OpenAI, a real Redis for the platform's, and a free
    port for the platform's (which sets PORT, or routes to the one its file names)."""
    env = image.env | deployment.env | {name: OPERATOR[name] for name in REQUIRED}
    if deployment.redis is not None:
        assert redis_url is not None
        named = urlsplit(deployment.env[deployment.redis])
        env[deployment.redis] = urlunsplit(named._replace(netloc=urlsplit(redis_url).netloc))
    env["OPENAI_BASE_URL"] = f"{provider_url}/v1"
    env["PORT"] = str(free_port())
    return env


def start_command(deployment: Deployment, image: Image) -> list[str]:
    if deployment.command is None:
        return image.resolve(image.command)
    if isinstance(deployment.command, str):  # a Procfile's line, run by a shell
        image.resolve(deployment.command.split()[:1])  # its program is the image's
        return ["/bin/sh", "-c", deployment.command]
    return image.resolve(deployment.command)


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the process's whole group, as a platform stops a container or a dyno: a Procfile's
    shell may have started the server as its child rather than replaced itself with it."""
    os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while _group_alive(process):
        if time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    process.wait()


def _group_alive(process: subprocess.Popen[bytes]) -> bool:
    process.poll()  # reap the leader once it exits
    try:
        os.killpg(process.pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_until_healthy(running: list[Running], timeout: float = 60) -> None:
    """Until each one's /healthz answers 200 (all start at once: their start-ups overlap)."""
    waiting = list(running)
    deadline = time.monotonic() + timeout
    while waiting:
        for each in list(waiting):
            if each.process.poll() is not None:
                raise AssertionError(f"{each.deployment.name} exited with {each.process.returncode}:\n{each.logs()}")
            try:
                if httpx.get(f"{each.url}/healthz", timeout=1).status_code == 200:
                    waiting.remove(each)
            except httpx.TransportError:
                pass
        assert time.monotonic() < deadline, f"no answer from {[each.deployment.name for each in waiting]}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Image:
    return build(tmp_path_factory.mktemp("image"), read_dockerfile())


@pytest.fixture(scope="module")
def running(
    image: Image, fake_upstream: tuple[FakeProvider, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Running]]:
    """Every deployment's start command, running with its settings (one Redis each where its file names one)."""
    _, provider_url = fake_upstream
    logs = tmp_path_factory.mktemp("deployments")
    with ExitStack() as stack:
        started = {}
        for name, deployment in DEPLOYMENTS.items():
            redis_server = stack.enter_context(RedisServer()) if deployment.redis is not None else None
            env = environment(deployment, image, provider_url, redis_server.url if redis_server else None)
            log = logs / f"{name}.log"
            with log.open("wb") as file:
                process = subprocess.Popen(
                    start_command(deployment, image),
                    cwd=image.workdir,
                    env=env,
                    stdout=file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own process group, stopped as a whole
                )
            stack.callback(stop, process)
            started[name] = Running(deployment, env, process, log, redis_server)
        wait_until_healthy(list(started.values()))
        yield started


def healthcheck(image: Image, env: dict[str, str]) -> int:
    """The image's HEALTHCHECK command, run as the engine runs it: in the container's environment."""
    done = subprocess.run(image.resolve(image.healthcheck), env=env, capture_output=True, timeout=30, check=False)
    return done.returncode


def mint(http: httpx.Client) -> str:
    """A token, with the challenge solved as the browser SDK solves it."""
    asked = http.post("/api/token")
    challenge = assert_error(asked, 401, "ChallengeRequired")["challenge"]
    minted = http.post("/api/token", json={"solution": solve_challenge_payload(challenge)})
    assert minted.status_code == 200, minted.text
    token: str = minted.json()["token"]
    TOKENS.append(token)
    return token


def test_the_image_serves_health_tokens_and_chat_and_its_health_check_tells(
    image: Image, running: dict[str, Running], fake_upstream: tuple[FakeProvider, str]
) -> None:
    docker = running["docker"]
    with docker.client() as http:
        health = http.get("/healthz")
        assert health.json() | {"version": "-"} == {"status": "ok", "version": "-", "storage": True}
        assert healthcheck(image, docker.env) == 0
        token = mint(http)
        body = {"messages": [{"role": "user", "content": "Hello from the image"}], "stream": True}
        reply = http.post("/api/chat", json=body, headers=bearer(token))
        assert reply.status_code == 200, reply.text
        assert sse_events(reply)[-1] == "[DONE]"
    # The provider got the operator's key, never the browser's token.
    assert fake_upstream[0].last_request.headers["authorization"] == f"Bearer {KEY}"
    # Where nothing answers, the health check fails: the engine would mark the container unhealthy.
    assert healthcheck(image, docker.env | {"PORT": str(free_port())}) != 0
    logs = docker.logs()
    assert "Application startup complete" in logs
    assert f"http://127.0.0.1:{docker.env['PORT']}" in logs  # HOST=0.0.0.0, shown as the loopback URL
    assert_clean_logs(logs, TOKENS)


@pytest.mark.parametrize("name", [name for name in DEPLOYMENTS if name != "docker"])
def test_each_platform_runs_with_the_settings_of_its_file(name: str, image: Image, running: dict[str, Running]) -> None:
    deployment = running[name]
    with deployment.client() as http:
        assert http.get("/healthz").json()["storage"] is True
        assert healthcheck(image, deployment.env) == 0
        mint(http)
    logs = deployment.logs()
    # The process runs on the settings the file gives.
    described = Settings.from_env(deployment.env).describe()
    (line,) = [line for line in logs.splitlines() if " settings: " in line]
    for setting in deployment.deployment.env.keys() & described.keys():
        assert f"{setting}={json.dumps(described[setting], ensure_ascii=False)}" in line, setting
    if deployment.redis is not None:
        # Its counts went to the Redis its file names, which every replica shares.
        with redis.Redis(port=deployment.redis.port) as client:
            assert client.dbsize() > 0
    assert_clean_logs(logs, TOKENS)
