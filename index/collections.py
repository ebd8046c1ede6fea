"""Named collections: several verified index directories served side by side.

``default`` is the configured index (RAGROUTE_INDEX_DIR, else the demo corpus). Every other
collection is a subdirectory of the collections folder (RAGROUTE_COLLECTIONS_DIR, default
``$RAGROUTE_HOME/collections``) holding an index (its manifest), named by the directory:

    $RAGROUTE_HOME/collections/
        handbook/      manifest.json  index.faiss  chunks.jsonl   -> collection "handbook"
        api-docs/      ...                                        -> collection "api-docs"

``ragroute index build SOURCE --out $RAGROUTE_HOME/collections/NAME`` makes one. A collection
that fails its checks (model, sha256) is refused and logged, never served half-checked; the
others still serve. A name asked for but not loaded triggers a rescan of the folder (at most
once per ``RESCAN_S``), so a collection built while the service runs is picked up without a
restart. A collection already served keeps its loaded version until the service restarts
(rebuilding one in place while serving is not picked up yet).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from pathlib import Path

from index.manifest import MANIFEST
from index.store import IndexStore
from pipelines.errors import ArtifactError, NotFound

log = logging.getLogger(__name__)

DEFAULT = "default"
NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
NAME_RULE = "1-64 characters: lower-case letters, digits, '-' and '_', starting with a letter or digit"
RESCAN_S = 1.0


class Collections:
    def __init__(self, default: IndexStore, folder: Path | None, *, embedding_model: str) -> None:
        self.folder = folder
        self.embedding_model = embedding_model
        self._stores: dict[str, IndexStore] = {DEFAULT: default}
        self._refused: dict[str, str] = {}  # name -> why, so a broken one is not reloaded every rescan
        self._lock = threading.Lock()
        self._scanned = 0.0
        self.rescan()

    def names(self) -> list[str]:
        return sorted(self._stores)

    def get(self, name: str) -> IndexStore:
        """The store of ``name``; NotFound (404) naming the valid ones when there is none."""
        store = self._stores.get(name)
        if store is None and NAME.match(name) and time.monotonic() - self._scanned >= RESCAN_S:
            self.rescan()
            store = self._stores.get(name)
        if store is None:
            why = f" (refused: {self._refused[name]})" if name in self._refused else ""
            raise NotFound("collection", f"{name!r} is not a collection{why}; valid: {', '.join(self.names())}")
        return store

    def rescan(self) -> None:
        """Load the folder's collections not loaded yet."""
        with self._lock:
            self._scanned = time.monotonic()
            if self.folder is None or not self.folder.is_dir():
                return
            for path in sorted(self.folder.iterdir()):
                name = path.name
                if name.startswith("."):  # an index being written (index/store.py writes beside, then renames)
                    continue
                if name in self._stores or name in self._refused or not (path / MANIFEST).is_file():
                    continue
                if name == DEFAULT or not NAME.match(name):
                    why = "the default collection is RAGROUTE_INDEX_DIR" if name == DEFAULT else NAME_RULE
                    log.warning("ignoring collection folder %s: %s", path, why)
                    self._refused[name] = why
                    continue
                try:
                    self._stores[name] = IndexStore.load(path, embedding_model=self.embedding_model)
                except ArtifactError as exc:
                    log.error("collection %s refused: %s", name, exc)
                    self._refused[name] = str(exc)
                    continue
                log.info("collection %s: %s (%d chunks)", name, self._stores[name].manifest.index_version,
                         self._stores[name].manifest.vector_count)

    def describe(self) -> list[dict]:
        return [{"name": name, **self._stores[name].manifest.model_dump(
            include={"index_version", "embedding_model", "index_type", "vector_count", "document_count", "source",
                     "built_at"})} for name in self.names()]
