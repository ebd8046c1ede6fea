"""What every ragroute service shares: connection settings, logging, error mapping."""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import os
import signal
import time
from pathlib import Path

from common.errors import RagrouteError, StageError, public_message
from pipelines.config.services import ProcessSettings

# What every service process reads from the environment, once (pipelines/config/services.py).
PROCESS = ProcessSettings.from_env()

# bentoml 1.4.30+ recycles a caller's connection to a dependency every 100 calls / 300 s and
# fails the in-flight requests with HTTP 500 (upstream #5540/#5544). Every *called* service
# sets this; tests/e2e/test_rag_query.py keeps a burst test that would catch a regression.
RUNNER_CONNECTION = {"max_requests": 1_000_000_000, "max_age": 1e9}

# The stage services' own access logs are off: a line per hop (five per answered question,
# hundreds a second under load) cost ~5% of a hop's CPU and repeat what the entry service's
# access log (same trace id) and /metrics say. RAGROUTE_STAGE_ACCESS_LOG=1 turns them back on.
STAGE_LOGGING = {"access": {"enabled": PROCESS.stage_access_log}}

# Callee timeouts (seconds). A dependency call's client timeout is the callee's
# traffic.timeout x 1.01, so these bound how long the RAG service can wait on a stage.
TIMEOUT_S = {"embedding": 30, "retrieval": 30, "reranking": 30, "routing": 30, "generation": 180, "rag": 300}


def setup_logging() -> None:
    """Our loggers at RAGROUTE_LOG_LEVEL (default INFO) with a request-friendly format."""
    level = PROCESS.log_level
    for name in ("pipelines", "services", "index", "common"):
        logger = logging.getLogger(name)
        logger.setLevel(level)
        if not logger.handlers:
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [pid %(process)d] %(message)s"))
            logger.addHandler(handler)
            logger.propagate = False


def yield_to_generation() -> None:
    """Lower this process's CPU priority by RAGROUTE_STAGE_NICE levels, every thread of it (on
    Linux a thread's priority is its own; threads started later inherit their creator's). Called
    by every service but Generation: at idle nothing changes; under a burst, a generation that
    admission let in keeps its core and finishes in time, while the burst's other work (their
    embeddings, retrievals, extracts) waits. Measured without it: 16 closed-loop clients getting
    extracts in ~0.2 s kept both cores busy, and every admitted generation was cut at its budget."""
    by = PROCESS.stage_nice
    if not by:
        return
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:  # not Linux: the calling thread's (the process's) priority
        tids = [0]
    for tid in tids:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + by))
        except OSError as exc:  # a thread that ended meanwhile, or not permitted: it keeps its priority
            logging.getLogger(__name__).debug("priority of thread %s unchanged: %s", tid, exc)


def error_body(exc: RagrouteError, request_id: str | None = None) -> dict:
    """The one place where a ragroute error becomes a response body (its status is exc.status).
    The message is written for clients (common/errors.py); ``request_id`` finds the details in the log."""
    body = {"error": public_message(exc)}
    if field := getattr(exc, "field", None):
        body["field"] = field
    if request_id:
        body["request_id"] = request_id
    return body


class AdminThrottle:
    """Slows down guessing the admin token: after ``limit`` wrong tokens within ``window_s``
    (per process), every admin request is a 429 until the oldest of them is ``window_s`` old,
    a right token included (the guesser and the admin cannot be told apart)."""

    def __init__(self, limit: int = 5, window_s: float = 60.0, clock=time.monotonic) -> None:
        self.limit, self.window_s, self._clock = limit, window_s, clock
        self._failures: collections.deque[float] = collections.deque()

    def wait_s(self) -> float:
        now = self._clock()
        while self._failures and now - self._failures[0] >= self.window_s:
            self._failures.popleft()
        return self._failures[0] + self.window_s - now if len(self._failures) >= self.limit else 0.0

    def failed(self) -> None:
        self._failures.append(self._clock())


ADMIN_THROTTLE = AdminThrottle()


def admin_refusal(token: str, authorization: str | None,
                  throttle: AdminThrottle = ADMIN_THROTTLE) -> tuple[int, str] | None:
    """None when ``authorization`` is ``Bearer <token>`` (compared in constant time), else the
    (status, message) to refuse with: 403 when no admin token is set (the admin APIs are off),
    429 after too many failed attempts (:class:`AdminThrottle`)."""
    import hmac

    if not token:
        return 403, "the admin API (cache_purge, cache_stats, /ingest) is disabled; set RAGROUTE_ADMIN_TOKEN to enable it"
    if wait := throttle.wait_s():
        return 429, f"too many failed admin attempts; retry in {math.ceil(wait)} s"
    if not hmac.compare_digest((authorization or "").encode(), f"Bearer {token}".encode()):
        if authorization:  # a guess (no header at all guesses nothing)
            throttle.failed()
            logging.getLogger("services.admin").warning("admin request with a wrong token refused")
        return 401, "missing or wrong 'Authorization: Bearer <RAGROUTE_ADMIN_TOKEN>'"
    return None


def error_response(exc: RagrouteError, request_id: str | None = None):
    from starlette.responses import JSONResponse

    return JSONResponse(error_body(exc, request_id), status_code=exc.status)


def to_bentoml(exc: RagrouteError) -> Exception:
    """For inner services: a BentoML exception carrying our status (4xx text is passed through).

    A StageError raised inside an inner service means *its* dependency failed (Milvus behind
    the Retrieval service): it goes out as 424 Failed Dependency, whose text BentoML passes on
    (a 5xx's text it replaces with "An unexpected error has occurred"), so the entry service can
    say what failed. The entry service reports it as that stage's failure (503) either way."""
    from http import HTTPStatus

    from bentoml.exceptions import BentoMLException

    err = BentoMLException(str(exc))
    err.error_code = HTTPStatus.FAILED_DEPENDENCY if isinstance(exc, StageError) else HTTPStatus(exc.status)
    return err


@contextlib.contextmanager
def refuse_to_start(service: str):
    """A bad setting or artifact found in ``__init__`` stops the whole `bentoml serve`.

    bentoml 1.4.39 logs an ``__init__`` exception and keeps the server process up, never ready:
    an orchestrator sees a live process, and a user a hanging start. Instead, log the reason
    and ask the serve process (this worker's parent) to shut down: it exits, and the reason is
    the last error in the log."""
    try:
        yield
    except RagrouteError as exc:
        logging.getLogger(f"services.{service}").critical("%s refuses to start: %s", service, exc)
        if PROCESS.exit_on_startup_error and _parent_is_bentoml():
            os.kill(os.getppid(), signal.SIGTERM)
        raise


def _parent_is_bentoml() -> bool:
    """Only a `bentoml serve` parent is stopped (never, say, a test runner that built a service)."""
    try:
        return b"bentoml" in Path(f"/proc/{os.getppid()}/cmdline").read_bytes()
    except OSError:
        return False
