"""``llmguard serve``: the bundled server, configured by environment variables; ``check`` and ``keygen``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import secrets
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from llmguard._access_log import JSONFormatter, TextFormatter
from llmguard._metrics import worker_directory
from llmguard._settings import Settings, SettingsError
from llmguard._settings_docs import plain_text as settings_help
from llmguard._version import __version__

if TYPE_CHECKING:
    from starlette.types import ASGIApp

DEFAULT_PORT = 8000
#: ``llmguard keygen``: 48 random bytes, 64 URL-safe characters.
KEYGEN_BYTES = 48


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llmguard", description="A safe LLM proxy for front-end apps.")
    parser.add_argument("--version", action="version", version=f"llmguard {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="run the proxy server",
        description="Run the proxy server, configured by the environment variables below.",
        epilog=settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--host", help="interface to bind (default: 127.0.0.1, or 0.0.0.0 when PORT is set)")
    serve.add_argument("--port", type=int, help=f"port to listen on (default: $PORT or {DEFAULT_PORT})")
    serve.add_argument(
        "--uds",
        metavar="PATH",
        help="listen on this Unix socket instead of a port (behind a proxy on the same machine: "
        "set TRUSTED_PROXIES=unix so that clients keep their own limits)",
    )
    serve.add_argument("--demo", action="store_true", help="run offline against a built-in fake provider")
    serve.add_argument("--env-file", help="read settings from this file too (the environment wins)")
    serve.add_argument("--workers", type=int, default=1, help="worker processes (share limits with redis://)")
    commands.add_parser(
        "keygen",
        help="print a new random secret for JWT_SECRET",
        description="Print a new random secret for JWT_SECRET (64 URL-safe characters) and nothing else.",
    )
    check = commands.add_parser(
        "check",
        help="check the settings, the storage and the provider key before a deploy",
        description="Validate the settings as `serve` would, ask the storage whether it answers and the provider "
        "for its model list with the key, and print what the server would run on (never a secret). "
        "Exit status: 0 all good, 1 a check failed, 2 the settings are invalid.",
    )
    check.add_argument("--env-file", help="read settings from this file too (the environment wins)")
    check.add_argument("--demo", action="store_true", help="check the offline demo's settings (no provider call)")
    args = parser.parse_args(argv)
    if args.command == "keygen":
        print(secrets.token_urlsafe(KEYGEN_BYTES))
        return 0
    if args.command == "check":
        return _check(args)
    return _serve(args)


def _check(args: argparse.Namespace) -> int:
    environ = _environ(args)
    if isinstance(environ, int):
        return environ
    port = environ.get("PORT", "")
    settings = _settings(args, environ, port=int(port) if port.isdigit() else DEFAULT_PORT)
    if isinstance(settings, int):
        return settings
    from llmguard._check import check

    return check(settings, sys.stdout)


def _environ(args: argparse.Namespace) -> dict[str, str] | int:
    """The settings' variables: ``--env-file``'s, then the environment's over them (or the exit status)."""
    environ: dict[str, str] = {}
    if args.env_file:
        try:
            environ.update(_read_env_file(args.env_file))
        except OSError as exc:
            return _fail(f"cannot read --env-file {args.env_file!r}: {exc.strerror}")
    environ.update(os.environ)
    return environ


def _settings(args: argparse.Namespace, environ: Mapping[str, str], *, port: int) -> Settings | int:
    """The settings, or the exit status after saying which one is wrong (the same words for serve and check)."""
    try:
        return load_settings(environ, demo=args.demo, port=port)
    except SettingsError as exc:
        if exc.name == "OPENAI_API_KEY" and "required" in exc.reason:
            return _fail(
                "OPENAI_API_KEY is not set: set it to your provider key, "
                f"or run `llmguard {args.command} --demo` to try llmguard offline."
            )
        return _fail(str(exc))


def _serve(args: argparse.Namespace) -> int:
    environ = _environ(args)
    if isinstance(environ, int):
        return environ
    try:
        port = args.port if args.port is not None else int(environ.get("PORT") or DEFAULT_PORT)
    except ValueError:
        return _fail(f"PORT has value {environ['PORT']!r}: expected a port number")
    if not 0 <= port <= 65535:
        return _fail(f"port has value {port}: expected 0 to 65535")
    # A platform that sets PORT (Railway, Render, Fly) routes to the container from outside.
    all_interfaces = "0.0.0.0"  # noqa: S104
    host = args.host or environ.get("HOST") or (all_interfaces if environ.get("PORT") else "127.0.0.1")

    settings = _settings(args, environ, port=port)
    if isinstance(settings, int):
        return settings

    if args.workers < 1:
        return _fail(f"--workers has value {args.workers}: expected 1 or more")
    configure_logging(settings)
    import uvicorn

    from llmguard._app import create_app
    from llmguard._server import FreezeAfterStartup, protocol

    log = logging.getLogger("llmguard")
    app: ASGIApp | str
    if args.workers > 1:
        settings = _prepare_workers(settings, args.workers, log)
        app = "llmguard._cli:worker_app"
    else:
        try:
            app = FreezeAfterStartup(create_app(settings))
        except ValueError as exc:
            return _fail(str(exc))
        log_settings(settings)
    _raise_open_files_limit(settings, log)
    shown = "127.0.0.1" if host in (all_interfaces, "::") else host
    mode = "offline demo (fake provider, no key used)" if settings.demo else settings.openai_base_url
    where = f"unix:{args.uds}" if args.uds else f"http://{shown}:{port}"
    log.info(
        "llmguard %s on %s, provider: %s, model: %s%s",
        __version__,
        where,
        mode,
        settings.openai_model,
        f"; open http://{shown}:{port}/ in a browser" if settings.serves_demo_page and not args.uds else "",
    )
    if args.uds:
        warn_blind_socket(settings, log)
    uvicorn.run(
        app,  # an app, or an import string for the workers
        host=host,
        port=port,
        uds=args.uds,
        workers=args.workers,
        factory=args.workers > 1,
        log_config=None,
        access_log=False,
        # llmguard reads forwarding headers itself, only from TRUSTED_PROXIES.
        proxy_headers=False,
        server_header=False,
        # Idle keep-alive connections are closed after this; behind a load balancer, make it longer
        # than the balancer's own idle timeout, or it may reuse a connection just as it closes.
        timeout_keep_alive=int(settings.keep_alive_timeout),
        # uvicorn's protocol with a deadline for request headers and a JSON 503 past MAX_CONNECTIONS.
        http=protocol(header_timeout=settings.header_timeout, max_connections=settings.max_connections),  # type: ignore[arg-type]
    )
    return 0


def warn_blind_socket(settings: Settings, log: logging.Logger) -> None:
    """Warn when serving on a Unix socket whose peers' forwarding headers will not be read.

    A Unix-socket peer has no address, so without ``TRUSTED_PROXIES=unix``
    every client is the same client to every limit, budget and ladder.
    """
    if "unix" in settings.trusted_proxies:
        return
    log.warning(
        "serving on a Unix socket, where clients have no address, and TRUSTED_PROXIES does not name 'unix'%s: "
        "every client shares one rate limit, one token budget and one challenge ladder, and the first "
        "heavy user locks everyone out. Set TRUSTED_PROXIES=unix (and have the proxy send X-Forwarded-For%s).",
        ", so CLIENT_IP_HEADER is not read" if settings.client_ip_header else "",
        f" or {settings.client_ip_header}" if settings.client_ip_header else "",
    )


def _prepare_workers(settings: Settings, workers: int, log: logging.Logger) -> Settings:
    """Hand the settings to the worker processes, exactly: through the environment they inherit."""
    if settings.storage_url.startswith("memory"):
        log.warning(
            "STORAGE_URL is memory:// with %d workers: each worker counts on its own, so every rate limit, "
            "token budget, monthly cap and challenge ladder is %d times looser (and a solved challenge or a "
            "single-use token is good once per worker). Use redis:// to share the counts.",
            workers,
            workers,
        )
    if settings.jwt_secret is None:
        log.warning(
            "JWT_SECRET is not set: the workers share a random secret made now, so tokens stop working "
            "when the server restarts. Set JWT_SECRET to at least 32 random bytes."
        )
        settings = dataclasses.replace(settings, jwt_secret=secrets.token_urlsafe(KEYGEN_BYTES))
    if settings.metrics:
        worker_directory()  # the workers add up their metrics in files there: set before they start
    # Every setting, not only those in the environment: --env-file, --demo and the secret made above.
    for name, value in settings.to_env().items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    return settings


def worker_app() -> ASGIApp:
    """The app of one worker process (``--workers N``), from the environment the CLI prepared."""
    from llmguard._app import create_app
    from llmguard._server import FreezeAfterStartup

    settings = Settings.from_env()
    configure_logging(settings)
    log_settings(settings)
    return FreezeAfterStartup(create_app(settings))


def log_settings(settings: Settings) -> None:
    """One line with every setting this process runs on (secrets only say whether they are set)."""
    described = settings.describe()
    logging.getLogger("llmguard").info(
        "settings: %s",
        " ".join(f"{name}={json.dumps(value, ensure_ascii=False)}" for name, value in described.items()),
    )


def _raise_open_files_limit(settings: Settings, log: logging.Logger) -> None:
    """Lift the soft limit on open files to the hard one: each connection may hold two (client, provider)."""
    try:
        import resource
    except ImportError:  # not on Windows
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 2 * settings.max_connections + 256
    target = hard if hard == resource.RLIM_INFINITY else min(hard, max(soft, wanted))
    if target != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft != resource.RLIM_INFINITY and soft < wanted:
        log.warning(
            "this process may open only %d files, and MAX_CONNECTIONS=%d needs about %d: "
            "lower MAX_CONNECTIONS or raise the limit (ulimit -n)",
            soft,
            settings.max_connections,
            wanted,
        )


def load_settings(environ: Mapping[str, str], *, demo: bool, port: int) -> Settings:
    overrides = {"demo": True} if demo else {}
    settings = Settings.from_env(environ, **overrides)
    if settings.demo:
        # The demo page is served by this process, so its own origins are allowed.
        own = tuple(f"http://{host}:{port}" for host in ("localhost", "127.0.0.1", "[::1]"))
        settings = dataclasses.replace(settings, allowed_origins=settings.allowed_origins + own)
    return settings


def configure_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if settings.log_format == "json" else TextFormatter())
    level = getattr(logging, settings.log_level.upper())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # httpx logs each provider call at INFO, which the access line already covers.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(level if level <= logging.DEBUG else logging.WARNING)


def _read_env_file(path: str) -> dict[str, str]:
    values: dict[str, str] = {}
    with open(path, encoding="utf-8") as file:
        for line in file:
            line = line.strip()
            if not line or line.startswith("#") or "=" not in line:
                continue
            key, value = line.removeprefix("export ").split("=", 1)
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                value = value[1:-1]
            values[key.strip()] = value
    return values


def _fail(message: str) -> int:
    print(f"llmguard: {message}", file=sys.stderr)
    return 2
