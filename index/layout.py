"""Collection names and the on-disk layout of a managed collection (no FAISS import: the RAG
entry service reads it too)."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

DEFAULT = "default"
NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
NAME_RULE = "1-64 characters: lower-case letters, digits, '-' and '_', starting with a letter or digit"
CURRENT = "CURRENT"  # a managed collection's served version: a folder name under VERSIONS
VERSIONS = "versions"


def current_folder(path: Path) -> Path | None:
    """The served version's folder of a managed collection, or None before its first version."""
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        name = (path / CURRENT).read_text().strip()
        if name:
            return path / VERSIONS / name
    return None
