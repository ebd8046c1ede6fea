"""Split documents into overlapping chunks with content-hash ids."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from common.records import Chunk
from common.text import content_id
from pipelines.indexing.load import Document

DEFAULT_CHUNK_SIZE = 1000
DEFAULT_OVERLAP = 150


def check_params(size: int, overlap: int) -> None:
    if size < 50:
        raise ValueError(f"chunk size ({size}) must be >= 50 characters; raise --chunk-size")
    if not 0 <= overlap < size:
        raise ValueError(f"overlap ({overlap}) must be >= 0 and < chunk size ({size}); lower --overlap")


def split_text(text: str, size: int, overlap: int) -> list[str]:
    """Windows of at most ``size`` characters, cut at a paragraph, line or word boundary
    when one exists in the window's second half; consecutive windows share ~``overlap`` chars.

    >>> split_text("aaa bbb ccc ddd", size=8, overlap=0)
    ['aaa bbb', 'ccc ddd']
    """
    if not 0 <= overlap < size:
        raise ValueError(f"overlap ({overlap}) must be >= 0 and < chunk size ({size})")
    text = text.strip()
    pieces: list[str] = []
    start = 0
    while start < len(text):
        end = min(start + size, len(text))
        if end < len(text):
            for sep in ("\n\n", "\n", " "):
                cut = text.rfind(sep, start + size // 2, end)
                if cut > start:
                    end = cut
                    break
        piece = text[start:end].strip()
        if piece:
            pieces.append(piece)
        if end >= len(text):
            break
        nxt = end - overlap
        if overlap and nxt > start:
            space = text.find(" ", nxt, end)  # start the overlap on a word boundary
            nxt = space + 1 if space != -1 else nxt
        start = max(nxt, start + 1) if overlap else end
    return pieces


def chunk_documents(docs: Iterable[Document], size: int, overlap: int) -> Iterator[Chunk]:
    check_params(size, overlap)
    seen: set[str] = set()
    for doc in docs:
        for i, piece in enumerate(split_text(doc.text, size, overlap)):
            cid = content_id(doc.id, piece)
            if cid in seen:  # the same text twice in one document: index it once
                continue
            seen.add(cid)
            yield Chunk(id=cid, doc_id=doc.id, title=doc.title, text=piece, metadata={**doc.metadata, "chunk": i})


def embedding_text(chunk: Chunk) -> str:
    """What gets embedded: the title carries meaning the chunk text may not repeat."""
    return f"{chunk.title}\n{chunk.text}"
