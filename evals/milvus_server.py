"""A real Milvus (Milvus Lite's gRPC server, from PyPI) in its own process, reached by URI the way
a Milvus standalone is: several processes (Retrieval replicas, the ingestion API) share it.
Used by the test suite and the evals."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from evals.serving import free_port


@dataclass
class MilvusServer:
    workdir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 60.0) -> MilvusServer:
        try:
            import milvus_lite  # noqa: F401 - the server below runs from it
            from pymilvus import MilvusClient
        except ImportError as exc:
            raise RuntimeError("a local Milvus needs the dev extras: pip install -e '.[dev]'") from exc
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = (self.workdir / "milvus.log").open("a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(self.workdir / "data"),
             "--host", "127.0.0.1", "--port", str(self.port)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"milvus-lite exited: {(self.workdir / 'milvus.log').read_text()[-2000:]}")
            try:
                MilvusClient(uri=self.uri, timeout=1.0).list_collections(timeout=1.0)
                return self
            except Exception:  # noqa: BLE001 - not listening yet
                time.sleep(0.2)
        raise RuntimeError(f"milvus-lite not answering on {self.uri} after {timeout_s} s")

    def stop(self) -> None:
        """Kill -9 (tests simulate Milvus dying with it)."""
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, 9)
            self.proc.wait(10)

    def __enter__(self) -> MilvusServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
