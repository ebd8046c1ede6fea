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
restart.

A *managed* collection (pipelines/indexing/ingest.py: the ingestion API writes it) holds
versions instead: ``CURRENT`` names the served one under ``versions/``. A request that finds
``CURRENT`` changed (checked at most every ``CHECK_S``) starts loading the new version in a
background thread and is served by the loaded one; once loaded, the new version replaces it.
A search keeps the store it started with, so a query in flight finishes on its version.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from index.layout import DEFAULT, NAME, NAME_RULE, current_folder
from index.manifest import MANIFEST
from index.store import IndexStore
from pipelines.errors import ArtifactError, NotFound

log = logging.getLogger(__name__)

RESCAN_S = 1.0
CHECK_S = 0.2  # how often a managed collection's CURRENT is looked at


@dataclass
class _Managed:
    path: Path
    loaded: str  # the version folder's name
    checked: float = 0.0
    loading: bool = False


class Collections:
    def __init__(self, default: IndexStore, folder: Path | None, *, embedding_model: str) -> None:
        self.folder = folder
        self.embedding_model = embedding_model
        self._stores: dict[str, IndexStore] = {DEFAULT: default}
        self._managed: dict[str, _Managed] = {}
        self._refused: dict[str, str] = {}  # name -> why, so a broken one is not reloaded every rescan
        self._lock = threading.Lock()
        self._scanned = 0.0
        self.rescan()

    def names(self) -> list[str]:
        return sorted(self._stores)

    def get(self, name: str) -> IndexStore:
        """The store of ``name``; NotFound (404) naming the valid ones when there is none."""
        managed = self._managed.get(name)
        if managed is not None:
            self._follow(name, managed)
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
                folder = current_folder(path)  # a managed collection's served version
                served = folder if folder is not None else path
                if name in self._stores or name in self._refused or not (served / MANIFEST).is_file():
                    continue
                if name == DEFAULT or not NAME.match(name):
                    why = "the default collection is RAGROUTE_INDEX_DIR" if name == DEFAULT else NAME_RULE
                    log.warning("ignoring collection folder %s: %s", path, why)
                    self._refused[name] = why
                    continue
                try:
                    self._stores[name] = IndexStore.load(served, embedding_model=self.embedding_model)
                    if folder is not None:
                        self._managed[name] = _Managed(path, folder.name, time.monotonic())
                except ArtifactError as exc:
                    log.error("collection %s refused: %s", name, exc)
                    self._refused[name] = str(exc)
                    continue
                log.info("collection %s: %s (%d chunks)", name, self._stores[name].manifest.index_version,
                         self._stores[name].manifest.vector_count)

    def _follow(self, name: str, managed: _Managed) -> None:
        """Start loading a managed collection's new version when CURRENT moved (never blocks)."""
        now = time.monotonic()
        if managed.loading or now - managed.checked < CHECK_S:
            return
        managed.checked = now
        folder = current_folder(managed.path)
        if folder is None:  # dropped: stop serving it
            self._stores.pop(name, None)
            self._managed.pop(name, None)
            return
        if folder.name == managed.loaded:
            return
        managed.loading = True
        threading.Thread(target=self._load_version, args=(name, managed, folder), daemon=True).start()

    def _load_version(self, name: str, managed: _Managed, folder: Path) -> None:
        try:
            store = IndexStore.load(folder, embedding_model=self.embedding_model)
        except (ArtifactError, OSError) as exc:  # a version removed meanwhile, or refused: keep serving the old one
            log.warning("collection %s: version %s not loaded (%s); still serving %s", name, folder.name, exc,
                        managed.loaded)
        else:
            self._stores[name] = store
            managed.loaded = folder.name
            log.info("collection %s now serves %s (%s, %d chunks)", name, folder.name, store.manifest.index_version,
                     store.manifest.vector_count)
        finally:
            managed.loading = False
            managed.checked = 0.0  # look again at once: CURRENT may have moved on while loading

    def describe(self) -> list[dict]:
        for name, managed in list(self._managed.items()):
            self._follow(name, managed)
        return [{"name": name, "managed": name in self._managed, **self._stores[name].manifest.model_dump(
            include={"index_version", "embedding_model", "index_type", "vector_count", "document_count", "source",
                     "built_at"})} for name in self.names()]
