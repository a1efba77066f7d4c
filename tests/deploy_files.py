"""The deployment files at the repository's root, read as their platforms read them.

Shared by test_deploy.py (what each file says) and test_deploy_e2e.py (running what it says).
A Dockerfile reader small enough to trust (the instructions llmguard's Dockerfile uses, line
continuations, exec and shell forms, ``$VAR`` expansion), a ``.dockerignore`` matcher, and each
platform's settings: its start command, the environment it gives the process, and the secrets
it asks the operator for.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]  # no types-PyYAML among the dev dependencies

if sys.version_info >= (3, 11):
    import tomllib

ROOT = Path(__file__).parent.parent
GUIDES = ROOT / "docs" / "deploy"
#: What every deployment must be given by its operator: never written in a committed file.
SECRETS = ("OPENAI_API_KEY", "JWT_SECRET")
#: And what it must be told about its site.
REQUIRED = (*SECRETS, "ALLOWED_ORIGIN")
#: Who the client is behind the platform's proxy.
PROXY_SETTINGS = ("TRUSTED_PROXIES", "CLIENT_IP_HEADER")


# -- the Dockerfile ---------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case
    arguments: str  # continuation lines joined, as the builder joins them
    line: int

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form instruction (``CMD ["llmguard", "serve"]``), else None."""
        return exec_form(self.arguments)

    def options(self) -> tuple[dict[str, str], str]:
        """The ``--name=value`` flags in front of the arguments, and the rest."""
        flags: dict[str, str] = {}
        rest = self.arguments.strip()
        while match := re.match(r"--([a-z-]+)=(\S+)\s+", rest):
            flags[match[1]] = match[2]
            rest = rest[match.end() :]
        return flags, rest


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [instruction for instruction in self.instructions if instruction.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment after this stage's ENV instructions, each expanded as the builder does:
        with the variables set before that instruction."""
        env = dict(base or {})
        for instruction in self.all("ENV"):
            before = dict(env)
            for name, value in env_pairs(instruction.arguments):
                env[name] = expand(value, before)
        return env


def parse_dockerfile(text: str) -> list[Instruction]:
    """The instructions of a Dockerfile, with comments dropped and continuation lines joined."""
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue  # comments (and parser directives), also between continuation lines
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1])
            continue
        pending.append(stripped)
        keyword, _, arguments = " ".join(part for part in pending if part).partition(" ")
        instructions.append(Instruction(keyword.upper(), arguments.strip(), start))
        pending = []
    if pending:
        raise ValueError(f"the Dockerfile ends inside the instruction that starts on line {start}")
    return instructions


def stages(instructions: list[Instruction]) -> list[Stage]:
    """The build stages, with ``FROM``'s image expanded from the ARGs declared before the first one."""
    arguments: dict[str, str] = {}
    found: list[Stage] = []
    for instruction in instructions:
        if instruction.keyword == "ARG" and not found:
            name, _, default = instruction.arguments.partition("=")
            arguments[name.strip()] = default.strip()
        elif instruction.keyword == "FROM":
            words = instruction.arguments.split()
            stage_name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            found.append(Stage(expand(words[0], arguments), stage_name))
        elif found:
            found[-1].instructions.append(instruction)
        else:
            raise ValueError(f"line {instruction.line}: {instruction.keyword} before the first FROM")
    return found


def read_dockerfile() -> list[Stage]:
    return stages(parse_dockerfile((ROOT / "Dockerfile").read_text(encoding="utf-8")))


def exec_form(text: str) -> list[str] | None:
    if not text.lstrip().startswith("["):
        return None
    value = json.loads(text)
    assert isinstance(value, list)
    assert all(isinstance(item, str) for item in value)
    return value


def env_pairs(arguments: str) -> list[tuple[str, str]]:
    """``ENV a=1 b="two words"``: its pairs (the legacy ``ENV name value`` form is refused)."""
    pairs = []
    for word in shlex.split(arguments):
        name, equals, value = word.partition("=")
        if not equals:
            raise ValueError(f"ENV {arguments!r}: write name=value")
        pairs.append((name, value))
    return pairs


def expand(text: str, env: Mapping[str, str]) -> str:
    """``$NAME`` and ``${NAME}`` replaced from ``env`` (unset: empty), as Dockerfile instructions do."""
    return re.sub(r"\$(?:\{(\w+)\}|(\w+))", lambda match: env.get(match[1] or match[2], ""), text)


def healthcheck_command(instruction: Instruction) -> list[str]:
    """The exec-form command of ``HEALTHCHECK [options] CMD [...]``."""
    _, rest = instruction.options()
    keyword, _, command = rest.partition(" ")
    assert keyword.upper() == "CMD", f"HEALTHCHECK {rest!r}: expected CMD"
    argv = exec_form(command)
    assert argv is not None, "HEALTHCHECK CMD: write the exec form (a JSON array), which needs no shell"
    return argv


# -- the build context ------------------------------------------------------------------


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """A ``.dockerignore`` pattern as a regex over a relative path (``**`` crosses directories)."""
    out = ""
    index = 0
    while index < len(pattern):
        if pattern.startswith("**/", index):
            out += "(?:.*/)?"
            index += 3
        elif pattern.startswith("**", index):
            out += ".*"
            index += 2
        elif pattern[index] == "*":
            out += "[^/]*"
            index += 1
        elif pattern[index] == "?":
            out += "[^/]"
            index += 1
        else:
            out += re.escape(pattern[index])
            index += 1
    return re.compile(out)


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether ``path`` (relative, ``/``-separated) is left out of the build context: the last
    pattern that matches it, or one of its parent directories, decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: index + 1]) for index in range(len(parts))]
    result = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        regex = _pattern_regex(pattern.removeprefix("!").strip("/"))
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            result = not negated
    return result


def build_context() -> list[str]:
    """Every file of the checkout that ``docker build .`` sends to the builder, sorted."""
    patterns = dockerignore_patterns()
    # A directory can be skipped when it is ignored and no negated pattern could bring back a file under it.
    negated = [pattern[1:].strip("/") for pattern in patterns if pattern.startswith("!")]
    files: list[str] = []
    for directory, subdirectories, names in os.walk(ROOT):
        relative = Path(directory).relative_to(ROOT).as_posix()
        prefix = "" if relative == "." else relative + "/"
        subdirectories[:] = [
            name
            for name in subdirectories
            if not ignored(prefix + name, patterns)
            or any(pattern.startswith(prefix + name) or "*" in pattern for pattern in negated)
        ]
        files += [prefix + name for name in names if not ignored(prefix + name, patterns)]
    return sorted(files)


# -- the platforms ----------------------------------------------------------------------


@dataclass(frozen=True)
class Deployment:
    """What a platform runs: ``command`` (None: the image's CMD; a string: a shell command line),
    the settings its file gives (``env``), and the names it asks the operator for (``asks``:
    secrets, which no committed file may hold, and what only the operator knows).

    ``redis`` names the variable whose value is the platform's own Redis (a real one replaces it
    when run); ``port`` is the port the platform routes to, when it does not set PORT itself."""

    name: str
    command: list[str] | str | None
    env: dict[str, str]
    asks: frozenset[str]
    redis: str | None = None
    port: int | None = None


def env_file(path: Path) -> dict[str, str]:
    """``NAME=value`` lines, as Compose's ``env_file`` and ``docker run --env-file`` read them."""
    values: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def load_compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text(encoding="utf-8"))
    return data


def load_render() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "render.yaml").read_text(encoding="utf-8"))
    return data


def load_fly() -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        with (ROOT / "fly.toml").open("rb") as file:
            return tomllib.load(file)
    raise RuntimeError("reading fly.toml takes tomllib, in the standard library from Python 3.11")


def load_railway() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((ROOT / "railway.json").read_text(encoding="utf-8"))
    return data


def procfile() -> dict[str, str]:
    lines = (ROOT / "Procfile").read_text(encoding="utf-8").splitlines()
    return {name.strip(): command.strip() for name, _, command in (line.partition(":") for line in lines if line)}


def render_service(kind: str) -> dict[str, Any]:
    services: list[dict[str, Any]] = load_render()["services"]
    (service,) = [service for service in services if service["type"] == kind]
    return service


def guide_settings(guide: str) -> dict[str, str]:
    """The settings a guide's code blocks give (``NAME=value`` or ``NAME: value``), for the platforms
    whose settings live in no file of the repository (Railway's variables, Cloud Run's flags)."""
    text = (GUIDES / guide).read_text(encoding="utf-8")
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)
    found: dict[str, set[str]] = {}
    for block in blocks:
        for name, value in re.findall(r"\b([A-Z][A-Z0-9_]+)(?:=|: )\"?([^\s\"\\]+)", block):
            found.setdefault(name, set()).add(value)
    settings = {}
    for name, values in found.items():
        assert len(values) == 1, f"{guide} gives {name} several values: {sorted(values)}"
        settings[name] = values.pop()
    return settings


def deployments() -> Iterator[Deployment]:
    """Each platform as its file (or, where no file can say it, its guide) configures llmguard."""
    example = env_file(ROOT / ".env.example")  # what `docker run --env-file` and Compose's env_file read
    given = {name: value for name, value in example.items() if value}
    blank = frozenset(name for name, value in example.items() if not value)
    yield Deployment("docker", None, given, blank)

    service = load_compose()["services"]["llmguard"]
    # Compose: `environment` wins over `env_file`.
    compose_env = given | {name: str(value) for name, value in service.get("environment", {}).items()}
    port = int(str(service["ports"][0]).rsplit(":", 1)[1])
    yield Deployment("compose", service.get("command"), compose_env, blank, redis="STORAGE_URL", port=port)

    web = render_service("web")
    variables: list[dict[str, Any]] = web["envVars"]
    render_env = {item["key"]: str(item["value"]) for item in variables if "value" in item}
    render_env |= {item["key"]: "redis://render-key-value:6379" for item in variables if "fromService" in item}
    asked = frozenset(item["key"] for item in variables if item.get("sync") is False)
    redis = next((item["key"] for item in variables if "fromService" in item), None)
    yield Deployment("render", web.get("dockerCommand"), render_env, asked, redis=redis)

    fly_env = {name: str(value) for name, value in load_fly().get("env", {}).items()}
    yield Deployment("fly", None, fly_env, frozenset(REQUIRED), port=int(fly_env["PORT"]))

    def from_guide(guide: str) -> dict[str, str]:
        return {name: value for name, value in guide_settings(guide).items() if name in PROXY_SETTINGS}

    start = load_railway()["deploy"].get("startCommand")
    yield Deployment("railway", start, from_guide("railway.md"), frozenset(REQUIRED))
    yield Deployment("cloud-run", None, from_guide("cloud-run.md"), frozenset(REQUIRED))
    yield Deployment("procfile", procfile()["web"], {}, frozenset(REQUIRED))
