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

With a Milvus configured (RAGROUTE_MILVUS_URI; index/milvus.py), the collections it holds are
served too: a background thread looks at Milvus every ``MILVUS_CHECK_S`` for collections added,
dropped, or whose alias moved to a new version, and loads a new version before serving it, as for
a managed folder. A name in both places is served from the place it was found in first (the
other refused, logged; the ingestion API never makes such a pair). Milvus being down leaves the
folder collections serving; the Milvus ones already loaded answer 503 per search until it is
back.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from common.errors import ArtifactError, NotFound, StageError
from index.layout import DEFAULT, NAME, NAME_RULE, current_folder
from index.manifest import MANIFEST
from index.milvus import MilvusBackend, MilvusStore
from index.store import IndexStore

log = logging.getLogger(__name__)

RESCAN_S = 1.0
CHECK_S = 0.2  # how often a managed collection's CURRENT is looked at
MILVUS_CHECK_S = 0.5  # how often Milvus is asked for its collections and their served versions


@dataclass
class _Managed:
    path: Path
    loaded: str  # the version folder's name
    checked: float = 0.0
    loading: bool = False


class Collections:
    def __init__(self, default: IndexStore, folder: Path | None, *, embedding_model: str,
                 milvus: MilvusBackend | None = None) -> None:
        self.folder = folder
        self.embedding_model = embedding_model
        self.milvus = milvus
        self._stores: dict[str, IndexStore | MilvusStore] = {DEFAULT: default}
        self._managed: dict[str, _Managed] = {}
        self._in_milvus: dict[str, str] = {}  # name -> the version collection served
        self._refused: dict[str, str] = {}  # name -> why, so a broken one is not reloaded every rescan
        self._milvus_refused: dict[str, tuple[str, str]] = {}  # name -> (version, why): not retried
        self._lock = threading.Lock()
        self._milvus_lock = threading.Lock()
        self._milvus_error = ""
        self._scanned = 0.0
        self._closed = threading.Event()
        self.rescan()
        if milvus is not None:
            threading.Thread(target=self._watch_milvus, name="milvus-collections", daemon=True).start()

    def close(self) -> None:
        """Stop watching Milvus (the stores already loaded stay usable)."""
        self._closed.set()

    def names(self) -> list[str]:
        return sorted(self._stores)

    def get(self, name: str) -> IndexStore | MilvusStore:
        """The store of ``name``; NotFound (404) naming the valid ones when there is none."""
        managed = self._managed.get(name)
        if managed is not None:
            self._follow(name, managed)
        store = self._stores.get(name)
        if store is None and NAME.fullmatch(name) and time.monotonic() - self._scanned >= RESCAN_S:
            self._rescan_folder()  # on the event loop: the folder only; Milvus is watched by a thread
            store = self._stores.get(name)
        if store is None:
            refusal = self._refused.get(name) or self._milvus_refused.get(name, ("", ""))[1]
            why = f" (refused: {refusal})" if refusal else ""
            raise NotFound("collection", f"{name!r} is not a collection{why}; valid: {', '.join(self.names())}")
        return store

    def rescan(self) -> None:
        """Load the folder's collections not loaded yet (and Milvus's: blocks up to its timeout)."""
        self._rescan_folder()
        if self.milvus is not None:
            self.sync_milvus()

    def _rescan_folder(self) -> None:
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
                if name == DEFAULT or not NAME.fullmatch(name):
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

    # -- Milvus ------------------------------------------------------------------------------
    def _watch_milvus(self) -> None:
        while not self._closed.wait(MILVUS_CHECK_S):
            self.sync_milvus()

    def sync_milvus(self) -> None:
        """Serve Milvus's collections as they are now: new ones and new versions loaded, dropped ones gone."""
        assert self.milvus is not None
        with self._milvus_lock:
            try:
                served = self.milvus.served_all()
            except StageError as exc:
                if str(exc) != self._milvus_error:  # once per distinct failure, not every poll
                    log.warning("Milvus collections not refreshed: %s", exc)
                self._milvus_error = str(exc)
                return
            if self._milvus_error:
                log.info("Milvus at %s answers again", self.milvus.uri)
                self._milvus_error = ""
            for name in [n for n in self._in_milvus if n not in served]:
                self._in_milvus.pop(name)
                self._stores.pop(name, None)
                log.info("collection %s (Milvus) dropped", name)
            for name, version in served.items():
                if self._in_milvus.get(name) == version or self._milvus_refused.get(name, ("",))[0] == version:
                    continue
                if name == DEFAULT or (name in self._stores and name not in self._in_milvus):
                    why = "a collection folder of that name is served"
                    log.warning("Milvus collection %s ignored: %s", name, why)
                    self._milvus_refused[name] = (version, why)
                    continue
                try:
                    store = self.milvus.open(version, embedding_model=self.embedding_model)
                except ArtifactError as exc:
                    log.error("collection %s (Milvus %s) refused: %s", name, version, exc)
                    self._milvus_refused[name] = (version, str(exc))
                    continue
                except StageError as exc:  # Milvus went away meanwhile: the next look retries
                    log.warning("collection %s (Milvus %s) not loaded: %s", name, version, exc)
                    continue
                if store.manifest.vector_count == 0:
                    continue  # created, no documents yet
                self._stores[name] = store
                self._in_milvus[name] = version
                self._milvus_refused.pop(name, None)
                log.info("collection %s now serves Milvus %s (%s, %d chunks)", name, version,
                         store.manifest.index_version, store.manifest.vector_count)

    def describe(self) -> list[dict]:
        for name, managed in list(self._managed.items()):
            self._follow(name, managed)
        return [{"name": name, "managed": name in self._managed or name in self._in_milvus,
                 **self._stores[name].manifest.model_dump(
                     include={"index_version", "embedding_model", "index_type", "backend", "vector_count",
                              "document_count", "source", "built_at"})} for name in self.names()]
