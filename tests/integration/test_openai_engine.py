"""The ``openai`` engine against a real OpenAI-compatible server (llama.cpp's, started here),
and its failure modes: endpoint down, endpoint silent, wrong API key."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import pytest

from common.errors import UpstreamError
from evals.serving import free_port
from pipelines.config import GenerationConfig
from pipelines.query.generate import Delta, Generator
from tests.integration.test_rerank_and_generate import lighthouse


def remote_generator(base_url: str, key: str = "test-key", **extra: str) -> Generator:
    env = {"RAGROUTE_GEN_PROFILE": "cpu", "RAGROUTE_LARGE_ENGINE": "openai", "RAGROUTE_LARGE_MODEL": "smollm2-remote",
           "RAGROUTE_LARGE_BASE_URL": base_url, "RAGROUTE_LARGE_API_KEY": key, "RAGROUTE_LARGE_PRICE_IN": "1",
           "RAGROUTE_LARGE_PRICE_OUT": "2", **extra}
    cfg = GenerationConfig.from_env(env)
    from pipelines.engines import ENGINES

    return Generator(cfg, engines={"large": ENGINES["openai"](cfg.tiers["large"], 1)})


def test_remote_tier_answers_and_streams(openai_server):
    g = remote_generator(openai_server.base_url)

    async def scenario():
        items = [i async for i in g.stream("large", "Who designed the Zorvik lighthouse?", lighthouse())]
        await g.close()
        return items

    items = asyncio.run(scenario())
    deltas, out = items[:-1], items[-1]
    assert len(deltas) > 1 and all(isinstance(d, Delta) for d in deltas)
    assert "Castellanos" in out.text and out.engine == "openai" and out.model == "smollm2-remote"
    assert out.finish_reason in ("stop", "length") and out.tokens_in > 100 and out.tokens_out > 0
    assert out.cost_usd == pytest.approx((out.tokens_in * 1 + out.tokens_out * 2) / 1e6)


def test_a_wrong_api_key_is_an_upstream_error_naming_the_status(openai_server):
    g = remote_generator(openai_server.base_url, key="wrong")
    with pytest.raises(UpstreamError, match="answered 401"):
        asyncio.run(g.generate("large", "Hi?", lighthouse()))


def test_an_endpoint_that_is_down_fails_fast_after_bounded_retries():
    g = remote_generator(f"http://127.0.0.1:{free_port()}/v1", RAGROUTE_LARGE_RETRIES="2")
    t0 = time.monotonic()
    with pytest.raises(UpstreamError, match="unreachable"):
        asyncio.run(g.generate("large", "Hi?", lighthouse()))
    assert time.monotonic() - t0 < 2.0  # 3 refused connections and 0.2 + 0.4 s of backoff


def test_a_dropping_endpoint_is_tried_exactly_retries_plus_one_times():
    # Accepts each connection and closes it at once: every attempt is a transport error.
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    accepted = []

    def drop():
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            accepted.append(conn)
            conn.close()

    threading.Thread(target=drop, daemon=True).start()
    g = remote_generator(f"http://127.0.0.1:{sock.getsockname()[1]}/v1", RAGROUTE_LARGE_RETRIES="2")
    with pytest.raises(UpstreamError, match="unreachable"):
        asyncio.run(g.generate("large", "Hi?", lighthouse()))
    time.sleep(0.2)
    sock.close()
    assert len(accepted) == 3  # the first attempt and two retries, no more


def test_a_silent_endpoint_times_out_within_the_tier_timeout():
    # Accepts connections and never answers: a hung server or a black-holed load balancer.
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    accepted = []
    threading.Thread(target=lambda: [accepted.append(sock.accept()) for _ in range(4)], daemon=True).start()
    g = remote_generator(f"http://127.0.0.1:{sock.getsockname()[1]}/v1", RAGROUTE_LARGE_TIMEOUT_S="0.5",
                         RAGROUTE_LARGE_RETRIES="1")
    t0 = time.monotonic()
    with pytest.raises(UpstreamError, match="timed out"):
        asyncio.run(g.generate("large", "Hi?", lighthouse()))
    took = time.monotonic() - t0
    sock.close()
    assert 1.0 <= took < 2.5 and len(accepted) == 2  # two attempts of 0.5 s, 0.2 s apart


class Scripted:
    """An OpenAI-compatible endpoint that answers each request from a script: ("status", code),
    ("answer", words) (a whole streamed completion), or ("cut", words) (those words streamed,
    then the connection drops before the body it announced is complete)."""

    def __init__(self, *script: tuple[str, object]) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.script, self.requests = list(script), 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers.get("content-length", 0)))
                outer.requests += 1
                kind, arg = outer.script.pop(0) if outer.script else ("status", 500)
                if kind == "status":
                    body = b'{"error": {"message": "scripted"}}'
                    self.send_response(arg)
                    self.send_header("content-length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                events = [{"choices": [{"delta": {"content": w}, "finish_reason": None}]} for w in arg]
                lines = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
                tail = b'data: {"choices": [{"delta": {}, "finish_reason": "stop"}]}\n\ndata: [DONE]\n\n'
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("content-length", str(len(lines) + len(tail) + (1000 if kind == "cut" else 0)))
                self.end_headers()
                self.wfile.write(lines if kind == "cut" else lines + tail)
                self.wfile.flush()
                if kind == "cut":
                    time.sleep(0.2)
                    self.connection.shutdown(socket.SHUT_RDWR)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def scripted():
    servers = []

    def make(*script):
        servers.append(Scripted(*script))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def run_stream(g: Generator) -> list:
    async def scenario():
        try:
            return [i async for i in g.stream("large", "Who designed it?", lighthouse())]
        finally:
            await g.close()
    return asyncio.run(scenario())


def test_408_429_and_5xx_are_retried_then_the_answer_streams(scripted):
    server = scripted(("status", 429), ("status", 503), ("answer", ["Ana ", "Castellanos"]))
    items = run_stream(remote_generator(server.url, RAGROUTE_LARGE_RETRIES="2"))
    assert "".join(i.text for i in items if isinstance(i, Delta)) == "Ana Castellanos" and server.requests == 3


def test_retries_stop_at_the_configured_count_naming_the_status(scripted):
    server = scripted(("status", 408), ("status", 408), ("status", 408), ("answer", ["late"]))
    with pytest.raises(UpstreamError, match="answered 408"):
        run_stream(remote_generator(server.url, RAGROUTE_LARGE_RETRIES="2"))
    assert server.requests == 3


def test_a_refusal_that_retrying_cannot_fix_is_not_retried(scripted):
    server = scripted(("status", 400), ("answer", ["never"]))
    with pytest.raises(UpstreamError, match="answered 400"):
        run_stream(remote_generator(server.url, RAGROUTE_LARGE_RETRIES="2"))
    assert server.requests == 1


def test_no_retry_once_the_first_words_are_out(scripted):
    server = scripted(("cut", ["Ana ", "Cas"]), ("answer", ["a second answer"]))
    seen = []

    async def scenario(g):
        try:
            async for item in g.stream("large", "Who designed it?", lighthouse()):
                seen.append(item)
        finally:
            await g.close()

    with pytest.raises(UpstreamError, match="unreachable"):
        asyncio.run(scenario(remote_generator(server.url, RAGROUTE_LARGE_RETRIES="2")))
    assert "".join(i.text for i in seen if isinstance(i, Delta)) == "Ana Cas" and server.requests == 1
