"""The OpenAI Chat Completions request as ragroute reads it: the request models (bounded; unknown
fields ignored as OpenAI-compatible servers do, except in the ``ragroute`` extension), their
parsing into a 400 that names the parameter as OpenAI writes it, and the error shape."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, StringConstraints, ValidationError

from common.errors import RagrouteError
from pipelines.api.access import Denied
from pipelines.api.schema import TEXT, Collection, Tenant, Verdict

MAX_MESSAGES = 128
MAX_MESSAGE_CHARS = 32_000


class OpenAIError(Exception):
    """An error in the OpenAI shape: ``{"error": {"message", "type", "param", "code"}}``."""

    TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
             404: "invalid_request_error", 429: "rate_limit_error"}

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.retry_after_s = retry_after_s

    @classmethod
    def of(cls, exc: RagrouteError) -> OpenAIError:
        field = getattr(exc, "field", None)
        retry = getattr(exc, "retry_after_s", None)
        return cls(exc.status, str(exc), f"ragroute.{field}" if field == "collection" else field,
                   "overloaded" if retry is not None else None, retry)

    @classmethod
    def denied(cls, exc: Denied) -> OpenAIError:
        """401 / 403 / 429 from the front door, with OpenAI's codes."""
        code = {401: "invalid_api_key", 403: "tenant_not_allowed"}.get(exc.status)
        if exc.status == 429:
            code = "insufficient_quota" if "quota" in str(exc) else "rate_limit_exceeded"
        param = "ragroute.tenant" if exc.status == 403 else None
        return cls(exc.status, str(exc), param, code, exc.retry_after_s)

    def body(self) -> dict[str, Any]:
        kind = self.TYPES.get(self.status, "server_error" if self.status >= 500 else "invalid_request_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


NonBlank = Annotated[StrictStr, Field(max_length=MAX_MESSAGE_CHARS, pattern=TEXT)]


class _TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: NonBlank


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: NonBlank | Annotated[list[_TextPart], Field(min_length=1, max_length=64)] = Field(
        description="a non-blank string, or text parts")

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content


class RagrouteOptions(BaseModel):
    """The ``ragroute`` extension of a request (``extra_body={"ragroute": {...}}`` in the SDK)."""

    model_config = ConfigDict(extra="forbid")
    top_k: Annotated[StrictInt, Field(ge=1, le=20)] = 4
    cache: Literal["use", "bypass", "refresh"] = "use"
    tenant: Tenant = "default"
    collection: Collection = "default"
    allow_degraded: StrictBool = True


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # as OpenAI-compatible servers do with fields they do not know

    model: Annotated[StrictStr, Field(min_length=1, max_length=128)]
    messages: Annotated[list[Message], Field(min_length=1, max_length=MAX_MESSAGES)]
    stream: StrictBool = False
    stream_options: dict[str, Any] | None = None
    max_tokens: Annotated[StrictInt, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[StrictInt, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(strict=True, ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(strict=True, ge=0, le=1)] | None = None
    n: Annotated[StrictInt, Field(ge=1, le=128)] | None = None
    stop: str | list[str] | None = None
    tools: list[Any] | None = None
    functions: list[Any] | None = None
    response_format: dict[str, Any] | None = None
    logprobs: StrictBool | None = None
    user: Annotated[StrictStr, Field(max_length=256)] | None = None
    ragroute: RagrouteOptions = Field(default_factory=RagrouteOptions)

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


class FeedbackExtension(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenant: Tenant = "default"


class FeedbackBody(BaseModel):
    """``POST /v1/feedback``: a verdict on a ``/v1`` answer by its ``id`` (``POST /feedback`` for REST)."""

    model_config = ConfigDict(extra="forbid")

    id: Annotated[str, StringConstraints(pattern=r"^chatcmpl-[0-9a-f]{12}$")]
    verdict: Verdict
    ragroute: FeedbackExtension = FeedbackExtension()


def parse_request(body: Any, model: type[BaseModel] = ChatRequest) -> Any:
    """The request (a ``model``), or an OpenAIError (400) naming the first invalid field."""
    if not isinstance(body, dict):
        raise OpenAIError(400, "the request body must be a JSON object", None, "invalid_body")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        param = _param(err["loc"])
        message = err["msg"]
        if param.endswith(".content"):  # a union: pydantic's first complaint names only one branch
            message = (f"must be a non-blank string of at most {MAX_MESSAGE_CHARS} characters without control "
                       "characters, or a list of {'type': 'text', 'text': ...} parts")
        raise OpenAIError(400, f"{param}: {message}", param, "invalid_value") from None


_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_UNION_TAGS = frozenset({"str", "int", "float", "bool", "none", "dict"})


def _param(loc: tuple) -> str:
    """pydantic's location as OpenAI writes a parameter (``messages.[1].content``), without the
    tags pydantic adds for union members (``constrained-str``, ``list[_TextPart]``)."""
    parts = [f"[{item}]" if isinstance(item, int) else str(item) for item in loc
             if isinstance(item, int) or (_FIELD.match(str(item)) and item not in _UNION_TAGS)]
    out: list[str] = []
    for part in parts:  # the first union branch's location is enough: stop where branches differ
        out.append(part)
        if part == "content":
            break
    return ".".join(out)
