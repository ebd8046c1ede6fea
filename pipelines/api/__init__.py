"""The HTTP/API layer: what goes over a wire, and who may send it.

    schema.py          the REST request and response models (pydantic, ``extra="forbid"``, bounded)
    openai_request.py  what an OpenAI chat request accepts, validated
    openai_compat.py   what it means, and what a completion (or its stream) looks like
    sse.py             server-sent events for streamed answers
    access.py          API keys, tenants, rate limits and admission at the front door
    quota.py           token quotas that hold under concurrency
    wire.py            the typed protocol between the RAG service and the stage services
"""
