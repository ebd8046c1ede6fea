"""Start and stop a real `bentoml serve services.rag:RAG` on a free loopback port.

Used by the end-to-end tests and by the benchmarks, so both measure the same thing.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
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
    proc: subprocess.Popen | None = None
    ready_s: float = 0.0

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    def worker(self, service: str):
        """The worker process (psutil.Process) of one BentoML service of this server."""
        for name, proc in service_processes(self.proc.pid):
            if name == service:
                return proc
        raise LookupError(f"no worker process for {service}")

    def post(self, body, timeout: float = 120.0) -> httpx.Response:
        return httpx.post(f"{self.url}/rag_query", json=body, timeout=timeout)


def service_processes(pid: int) -> list[tuple[str | None, "psutil.Process"]]:
    """(BentoML service name, process) for `bentoml serve` (pid) and every process under it; the
    name is None for a process without ``--service-name`` (the serve arbiter itself)."""
    import psutil

    root = psutil.Process(pid)
    out = []
    for proc in [root, *root.children(recursive=True)]:
        try:
            cmd = proc.cmdline()
        except psutil.Error:
            continue
        out.append((cmd[cmd.index("--service-name") + 1] if "--service-name" in cmd else None, proc))
    return out


def start(home: Path, env_extra: dict[str, str] | None = None, target: str = "services.rag:RAG",
          venv: Path | None = None) -> Server:
    """Run `bentoml serve TARGET` with RAGROUTE_HOME=home and wait until /readyz answers 200.

    ``venv``: run the bentoml of another virtualenv (the vLLM CPU lane's)."""
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = home / "serve.log"
    env = {**os.environ, "RAGROUTE_HOME": str(home), "BENTOML_HOME": str(home / "bentoml"),
           "BENTOML_DO_NOT_TRACK": "True", **(env_extra or {})}
    bentoml = venv / "bin" / "bentoml" if venv else Path(sys.executable).with_name("bentoml")
    started = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.Popen([str(bentoml), "serve", target, "--host", "127.0.0.1", "--port", str(port)],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(f"http://127.0.0.1:{port}", home, log, proc)
    deadline = started + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"bentoml serve exited with {proc.returncode}:\n{server.log_tail()}")
        try:
            if httpx.get(f"{server.url}/readyz", timeout=5).status_code == 200:
                server.ready_s = time.monotonic() - started
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    stop(server)
    raise RuntimeError(f"bentoml serve not ready after {READY_TIMEOUT_S} s:\n{server.log_tail()}")


def stop(server: Server) -> None:
    proc = server.proc
    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


@contextmanager
def serving(home: Path, env_extra: dict[str, str] | None = None, target: str = "services.rag:RAG",
            venv: Path | None = None):
    server = start(home, env_extra, target, venv)
    try:
        yield server
    finally:
        stop(server)
