"""A real `bentoml serve services.rag:RAG` (six processes) on a free loopback port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT

READY_TIMEOUT_S = 420


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    home: Path
    log: Path

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    def post(self, body, timeout: float = 120.0) -> httpx.Response:
        return httpx.post(f"{self.url}/rag_query", json=body, timeout=timeout)


def start(home: Path, env_extra: dict[str, str] | None = None) -> tuple[subprocess.Popen, Server]:
    port = free_port()
    log = home / "serve.log"
    env = {**os.environ, "RAGROUTE_HOME": str(home), "BENTOML_HOME": str(home / "bentoml"),
           "BENTOML_DO_NOT_TRACK": "True", **(env_extra or {})}
    bentoml = Path(sys.executable).with_name("bentoml")
    with log.open("w") as out:
        proc = subprocess.Popen([str(bentoml), "serve", "services.rag:RAG", "--host", "127.0.0.1", "--port", str(port)],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(f"http://127.0.0.1:{port}", home, log)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"bentoml serve exited with {proc.returncode}:\n{server.log_tail()}")
        try:
            if httpx.get(f"{server.url}/readyz", timeout=5).status_code == 200:
                return proc, server
        except httpx.HTTPError:
            pass
        time.sleep(1)
    stop(proc)
    raise RuntimeError(f"bentoml serve not ready after {READY_TIMEOUT_S} s:\n{server.log_tail()}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@pytest.fixture(scope="session")
def server(tmp_path_factory, model_cache) -> Server:
    # A fresh RAGROUTE_HOME: the service must build the demo index itself on first start.
    home = tmp_path_factory.mktemp("ragroute-home")
    proc, srv = start(home, {"RAGROUTE_MODEL_CACHE": str(model_cache)})
    try:
        yield srv
    finally:
        stop(proc)
