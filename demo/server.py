"""Run the real API (uvicorn) in a background thread, so the virtual rig talks HTTP like a rig."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import uvicorn

from itloop.settings import Settings
from server.app import KEEP_ALIVE_S, create_app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class BackgroundServer:
    """uvicorn on 127.0.0.1:<free port> in a daemon thread; ``stop()`` shuts it down cleanly."""

    def __init__(self, settings: Settings, port: int | None = None) -> None:
        self.port = port or free_port()
        config = uvicorn.Config(
            create_app(settings),
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            timeout_keep_alive=KEEP_ALIVE_S,  # longer than the clients' own (server.app says why)
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="itloop-api", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 30.0) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the API server did not start")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_in_subprocess(
    env: dict[str, str], workers: int = 1, timeout_s: float = 60.0
) -> tuple[subprocess.Popen[bytes], str]:
    """``uvicorn server.app:create_app`` as its own process (``workers`` of them), once healthy.

    For what a thread cannot show: several worker processes, each with its own caches (the
    API benchmark, the cross-worker revocation test). Returns the process and its base URL;
    the caller terminates it.
    """
    import httpx

    port = free_port()
    cmd = [sys.executable, "-m", "uvicorn", "server.app:create_app", "--factory", "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--workers", str(workers), "--log-level", "warning", "--no-access-log"]
    cmd += ["--timeout-keep-alive", str(KEEP_ALIVE_S)]
    proc = subprocess.Popen(cmd, env=env, cwd=Path(__file__).resolve().parents[1])
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(f"{base}/api/v1/health", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.terminate()
            raise RuntimeError("the uvicorn server did not become healthy")
        time.sleep(0.1)
