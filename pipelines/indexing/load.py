"""Load documents from a folder of text files, a BEIR corpus.jsonl, or the pydoc demo corpus."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from common.errors import BadRequest

TEXT_SUFFIXES = (".txt", ".md", ".rst")


@dataclass(frozen=True)
class Document:
    id: str
    title: str
    text: str
    metadata: dict[str, str] = field(default_factory=dict)


def _title_of(text: str, fallback: str) -> str:
    for line in text.splitlines():
        line = line.strip().lstrip("#").strip()
        if line and not set(line) <= set("=-*~^"):
            return line[:200]
    return fallback


def load_folder(root: Path) -> Iterator[Document]:
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        rel = path.relative_to(root).as_posix()
        if text.strip():
            yield Document(id=rel, title=_title_of(text, path.stem), text=text, metadata={"path": rel})


def load_beir(path: Path) -> Iterator[Document]:
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                doc_id, text = str(row["_id"]), str(row["text"])
            except (ValueError, KeyError, TypeError) as exc:
                raise BadRequest("source", f"{path}:{lineno} is not a BEIR corpus row ({exc})") from None
            if text.strip():
                yield Document(id=doc_id, title=str(row.get("title") or doc_id), text=text)


def load_pydoc_topics() -> Iterator[Document]:
    """The Python standard library's own help topics: a demo corpus with zero download."""
    from pydoc_data.topics import topics

    for name in sorted(topics):
        yield Document(id=f"pydoc:{name}", title=name, text=topics[name], metadata={"source": "pydoc_data.topics"})


def load(source: Path) -> Iterator[Document]:
    """Dispatch on the source: a folder of .txt/.md/.rst files or a BEIR-style .jsonl file."""
    if source.is_dir():
        return load_folder(source)
    if source.is_file() and source.suffix == ".jsonl":
        return load_beir(source)
    raise BadRequest("source", f"{source} is neither a folder of {'/'.join(TEXT_SUFFIXES)} files nor a corpus .jsonl file")
