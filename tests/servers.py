"""Real servers on loopback for the end-to-end tests: uvicorn in a thread, llmguard as a process."""

from __future__ import annotations

import contextlib
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import redis
import uvicorn

if TYPE_CHECKING:
    from typing_extensions import Self


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ThreadedServer:
    """Serve an ASGI app with uvicorn (real HTTP) in a background thread.

    ``options`` go to ``uvicorn.Config`` (``lifespan="on"``, ``root_path="/app"``...); the lifespan is off unless given.
    """

    def __init__(self, app: Any, **options: Any) -> None:
        self.port = free_port()
        options = {"lifespan": "off", **options}
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_config=None, **options)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ThreadedServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


class LLMGuardProcess:
    """``python -m llmguard serve`` as a real process; its log output goes to a file."""

    def __init__(self, env: dict[str, str], log_path: Path, *, args: tuple[str, ...] = ()) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.env = {
            "PATH": os.environ.get("PATH", ""),
            "PYTHONUNBUFFERED": "1",
            # Challenges are tested where they are the subject (test_challenge_e2e); elsewhere, off.
            "TOKEN_CHALLENGE": "off",
            **env,
        }
        self.args = args
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> LLMGuardProcess:
        command = [sys.executable, "-m", "llmguard", "serve", "--port", str(self.port), *self.args]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        # Generous: a start under coverage, beside other processes starting on a busy 2-core machine,
        # took up to 18 s (a deadline against hanging, not a measure of speed).
        deadline = time.monotonic() + 60
        while True:
            if self.process.poll() is not None:
                self.__exit__()
                raise RuntimeError(f"llmguard exited with {self.process.returncode}:\n{self.logs()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError(f"llmguard did not start:\n{self.logs()}")
            time.sleep(0.05)

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")


class RedisServer:
    """A throwaway ``redis-server`` on a free loopback port, with no persistence; started at once."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process = self._start()

    def _start(self) -> subprocess.Popen[bytes]:
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not self.answers():
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                process.wait(timeout=10)
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)
        return process

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def answers(self) -> bool:
        try:
            with redis.Redis(port=self.port, socket_timeout=1) as client:
                return bool(client.ping())
        except redis.ConnectionError:
            return False

    def flush(self) -> None:
        with redis.Redis(port=self.port, socket_timeout=1) as client:
            client.flushall()

    def connected_clients(self) -> int:
        with redis.Redis(port=self.port, socket_timeout=1) as client:
            info: dict[str, Any] = client.info("clients")
            return int(info["connected_clients"]) - 1  # not counting this one

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)


def closed_port_url(password: str = "") -> str:
    """A redis:// URL where nothing listens: connections are refused at once."""
    credentials = f":{password}@" if password else ""
    return f"redis://{credentials}127.0.0.1:{free_port()}/0"


def read_head(connection: socket.socket) -> tuple[bytes, bytes] | None:
    """Read up to the end of an HTTP message's head: (the head, what came after it), or None if the peer left."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def read_request(connection: socket.socket) -> bytes | None:
    """Read one HTTP request with a Content-Length body; its body, or None if the peer left first."""
    read = read_head(connection)
    if read is None:
        return None
    head, body = read
    length = next(
        (int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")),
        0,
    )
    while len(body) < length:
        chunk = connection.recv(65536)
        if not chunk:
            return None
        body += chunk
    return body


def _accepted(listener: socket.socket, closed: threading.Event) -> socket.socket | None:
    """The next connection to ``listener``, or None once ``closed`` is set (checked every 0.05 s)."""
    listener.settimeout(0.05)
    while not closed.is_set():
        try:
            connection, _ = listener.accept()
        except TimeoutError:
            continue
        except OSError:
            return None
        connection.settimeout(None)
        return connection
    return None


class InBackground:
    """``run`` on a daemon thread from ``__enter__``; ``__exit__`` sets ``stopping`` and waits for it to end."""

    join_timeout: float = 5

    def __init__(self) -> None:
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(timeout=self.join_timeout)

    def run(self) -> None:
        raise NotImplementedError


class LoopbackServer(InBackground):
    """A TCP server on a free loopback port, accepting on a thread; ``handle`` each connection."""

    def __init__(self) -> None:
        super().__init__()
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.port: int = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        self.listener.close()

    def handle(self, connection: socket.socket) -> None:
        raise NotImplementedError

    def run(self) -> None:
        while (connection := _accepted(self.listener, self.stopping)) is not None:
            self.handle(connection)


@dataclass(frozen=True)
class RawReply:
    """What a ``RawProvider`` sends: ``pieces`` of bytes as they are (HTTP or not), ``pause`` seconds
    apart; then it closes the connection or, with ``hold``, keeps it open without a word."""

    pieces: Sequence[bytes] = ()
    hold: bool = False
    pause: float = 0.1


class RawProvider(LoopbackServer):
    """A provider that answers with raw bytes: the faults no well-behaved server makes (on threads).

    Silence before the first byte, a stream that stalls, a body cut in the middle of a chunk,
    bytes that are not SSE or not HTTP at all; with no replies at all, it reads each request and
    hangs up without a word, as a provider that crashed, or a proxy that timed out, does after
    the request was sent. Each connection's request is read in full and recorded; the reply is
    the one of ``replies`` whose key occurs in the request body (keys must not contain one
    another), else ``default``.
    """

    def __init__(self, replies: Mapping[bytes, RawReply] | None = None, default: RawReply | None = None) -> None:
        super().__init__()
        self.replies = dict(replies or {})
        self.default = default or RawReply()
        #: The key of each request received (None: matched no key), in order of arrival.
        self.received: list[bytes | None] = []

    def count(self, key: bytes) -> int:
        return self.received.count(key)

    def handle(self, connection: socket.socket) -> None:
        threading.Thread(target=self._answer, args=(connection,), daemon=True).start()

    def _answer(self, connection: socket.socket) -> None:
        with connection:
            try:
                connection.settimeout(10)
                body = read_request(connection)
                if body is None:
                    return
                key = next((key for key in self.replies if key in body), None)
                self.received.append(key)
                reply = self.default if key is None else self.replies[key]
                for index, piece in enumerate(reply.pieces):
                    if index:
                        time.sleep(reply.pause)
                    connection.sendall(piece)
                connection.settimeout(0.1)
                while reply.hold and not self.stopping.is_set():
                    try:
                        if not connection.recv(65536):
                            return  # the client gave up
                    except TimeoutError:
                        continue
            except OSError:
                return


class LatencyProxy(LoopbackServer):
    """A TCP proxy on loopback that holds each forwarded chunk ``delay`` seconds (on threads).

    ``delay`` can be changed at any time; a chunk keeps the delay it arrived under, and chunks
    never overtake one another. With ``only`` set, only chunks that contain those bytes are
    held (to stall one kind of command). Bytes a side sent before closing are still delivered,
    as a network delivers what was sent before a FIN: a command whose sender gave up on it is
    still run by the server.
    """

    def __init__(self, target_port: int, *, delay: float = 0.0, only: bytes | None = None) -> None:
        super().__init__()
        self.target_port = target_port
        self.delay = delay
        self.only = only
        self.sockets: list[socket.socket] = []

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        for sock in list(self.sockets):
            with contextlib.suppress(OSError):
                sock.close()

    def handle(self, client: socket.socket) -> None:
        try:
            server = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
        except OSError:
            client.close()
            return
        server.settimeout(None)
        self.sockets += [client, server]
        for source, destination in ((client, server), (server, client)):
            chunks: queue.Queue[tuple[float, bytes] | None] = queue.Queue()
            threading.Thread(target=self._read, args=(source, chunks), daemon=True).start()
            threading.Thread(target=self._write, args=(chunks, destination), daemon=True).start()

    def _read(self, source: socket.socket, chunks: queue.Queue[tuple[float, bytes] | None]) -> None:
        try:
            while data := source.recv(65536):
                held = self.only is None or self.only in data
                chunks.put((time.monotonic() + (self.delay if held else 0.0), data))
        except OSError:
            pass
        chunks.put(None)

    def _write(self, chunks: queue.Queue[tuple[float, bytes] | None], destination: socket.socket) -> None:
        try:
            while (item := chunks.get()) is not None:
                due, data = item
                time.sleep(max(0.0, due - time.monotonic()))
                destination.sendall(data)
            destination.shutdown(socket.SHUT_WR)
        except OSError:
            pass


class RestartableRedis(RedisServer):
    """A ``RedisServer`` that can be killed (SIGKILL: its counts are lost) and started again on its port."""

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)

    def restart(self) -> None:
        self.process = self._start()
