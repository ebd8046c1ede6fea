"""On-disk index format: ``manifest.json`` + ``index.faiss`` + ``chunks.jsonl``.

Row i of the FAISS index is line i of ``chunks.jsonl``. The manifest records what the
index was built with and the sha256 of both files; :func:`index.store.load` checks all
of it before serving from the index.
"""
