"""A real local OpenAI-compatible server for the ``openai`` engine: llama.cpp's server
(``llama-cpp-python[server]``) on a packaged GGUF, on a free loopback port.

Used by the test suite (the hybrid deployment, where a tier is a remote endpoint) and by the
generation benchmark. It streams chat completions; it does not report token logprobs or
usage while streaming, so the engine's confidence is unknown and token counts are estimated.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from evals.serving import free_port


@dataclass
class OpenAIServer:
    model_path: Path
    workdir: Path
    alias: str = "smollm2-remote"
    api_key: str = ""
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout_s: float = 120.0) -> OpenAIServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(self.model_path), "--model_alias", self.alias,
               "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", "2048", "--n_threads", "1",
               # Its default interrupts a streaming request when another arrives (the first ends early,
               # empty or cut, without an error): queue them instead, as a real deployment would.
               "--interrupt_requests", "false"]
        if self.api_key:
            cmd += ["--api_key", self.api_key]
        log = (self.workdir / "openai-server.log").open("a")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited: {self.log_tail()}")
            try:
                if httpx.get(f"{self.base_url}/models", headers=headers, timeout=2).status_code == 200:
                    self._warm_up(headers)
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"llama_cpp.server not ready after {timeout_s} s: {self.log_tail()}")

    def _warm_up(self, headers: dict[str, str]) -> None:
        """One token through the chat endpoint: the first request pays for paging in the weights
        and setting up the chat handler (over 2 s on a slow core), which is not what a client's
        per-attempt timeout should be measured against."""
        body = {"model": self.alias, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 1}
        r = httpx.post(f"{self.base_url}/chat/completions", json=body, headers=headers, timeout=120)
        if r.status_code != 200:
            raise RuntimeError(f"llama_cpp.server warm-up answered {r.status_code}: {r.text[:500]}")

    def log_tail(self) -> str:
        return (self.workdir / "openai-server.log").read_text(errors="replace")[-2000:]

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections are accepted by the kernel, nothing answers."""
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.killpg(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
