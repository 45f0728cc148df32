"""The VectorIndex seam: cosine similarity in [-1, 1] (1 = same direction), partitioned by scope.

``search`` only ever returns ids upserted under the same scope: the scope is a hard
partition (one sub-index per scope), never a filter applied after a global search.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any, Iterable, Protocol, Sequence, runtime_checkable

import numpy as np

from truecost.errors import MissingExtraError, TruecostError


class CorruptIndexError(TruecostError):
    """An index file on disk does not match its manifest; rebuild it from the entry store."""


def check_vectors(vectors: np.ndarray, dims: int) -> np.ndarray:
    v = np.asarray(vectors, dtype=np.float32)
    if v.ndim == 1:
        v = v[None, :]
    if v.shape[1] != dims:
        raise ValueError(f"vector has {v.shape[1]} dimensions, index has {dims}")
    if not np.isfinite(v).all():
        raise ValueError("vector contains NaN or infinity (a broken embedder?)")
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ValueError("zero vector cannot be compared by cosine")
    return v / norms


@runtime_checkable
class VectorIndex(Protocol):
    dims: int

    def upsert(self, ids: Sequence[int], vectors: np.ndarray, scope: str) -> None: ...

    def search(self, vector: np.ndarray, k: int, scope: str) -> list[tuple[int, float]]:
        """Up to k (id, cosine similarity) pairs of the scope, most similar first."""

    def delete(self, ids: Iterable[int]) -> int: ...

    def count(self, scope: str | None = None) -> int: ...


class _Partitioned:
    """Shared bookkeeping: which scope holds each id, deletes under the lock."""

    _where: dict[int, str]
    _lock: threading.Lock

    def _delete_locked(self, ids: Iterable[int]) -> int:
        raise NotImplementedError

    def delete(self, ids: Iterable[int]) -> int:
        with self._lock:
            return self._delete_locked(list(ids))

    def count(self, scope: str | None = None) -> int:
        if scope is None:
            return len(self._where)
        return self._scope_size(scope)

    def _scope_size(self, scope: str) -> int:
        raise NotImplementedError


class ExactIndex(_Partitioned):
    """Brute-force cosine over a NumPy matrix per scope: exact, best for small caches."""

    def __init__(self, dims: int) -> None:
        self.dims = dims
        self._scopes: dict[str, tuple[np.ndarray, np.ndarray, int]] = {}  # scope -> (ids, vectors, n)
        self._where: dict[int, str] = {}
        self._lock = threading.Lock()

    def upsert(self, ids: Sequence[int], vectors: np.ndarray, scope: str) -> None:
        v = check_vectors(vectors, self.dims)
        with self._lock:
            self._delete_locked([i for i in ids if i in self._where])
            keys, mat, n = self._scopes.get(scope, (np.zeros(16, np.int64), np.zeros((16, self.dims), np.float32), 0))
            need = n + len(ids)
            if need > len(keys):
                cap = max(need, 2 * len(keys))
                keys = np.resize(keys, cap)
                mat = np.vstack([mat, np.zeros((cap - len(mat), self.dims), np.float32)])
            keys[n:need] = ids
            mat[n:need] = v
            self._scopes[scope] = (keys, mat, need)
            for i in ids:
                self._where[int(i)] = scope

    def search(self, vector: np.ndarray, k: int, scope: str) -> list[tuple[int, float]]:
        q = check_vectors(vector, self.dims)[0]
        with self._lock:
            found = self._scopes.get(scope)
            if found is None or found[2] == 0:
                return []
            keys, mat, n = found
            sims = mat[:n] @ q
            k = min(k, n)
            top = np.argpartition(-sims, k - 1)[:k]
            top = top[np.argsort(-sims[top])]
            return [(int(keys[j]), float(sims[j])) for j in top]

    def _delete_locked(self, ids: Iterable[int]) -> int:
        removed = 0
        for i in ids:
            scope = self._where.pop(int(i), None)
            if scope is None:
                continue
            keys, mat, n = self._scopes[scope]
            j = int(np.nonzero(keys[:n] == i)[0][0])
            keys[j], mat[j] = keys[n - 1], mat[n - 1]
            self._scopes[scope] = (keys, mat, n - 1)
            removed += 1
        return removed

    def _scope_size(self, scope: str) -> int:
        return self._scopes.get(scope, (None, None, 0))[2]

    def memory_bytes(self) -> int:
        return sum(m.nbytes + k.nbytes for k, m, _ in self._scopes.values())


class HNSWIndex(_Partitioned):
    """Approximate nearest neighbours with usearch (HNSW), one graph per scope, persisted to disk.

    ``save(folder)`` writes one file per scope and a manifest with their SHA-256; ``load``
    refuses a file whose digest differs (CorruptIndexError), so a damaged index is rebuilt,
    never searched.
    """

    def __init__(
        self,
        dims: int,
        connectivity: int = 16,
        expansion_add: int = 128,
        expansion_search: int = 64,
        dtype: str = "f16",
    ) -> None:
        try:
            from usearch.index import Index  # noqa: F401
        except ImportError:
            raise MissingExtraError("the HNSW vector index", "pip install 'truecost[ann]' (usearch)") from None
        self.dims, self.connectivity = dims, connectivity
        self.expansion_add, self.expansion_search, self.dtype = expansion_add, expansion_search, dtype
        self._scopes: dict[str, Any] = {}  # scope -> usearch Index (imported lazily)
        self._where: dict[int, str] = {}
        self._lock = threading.Lock()

    def _new(self):
        from usearch.index import Index

        return Index(
            ndim=self.dims,
            metric="cos",
            dtype=self.dtype,
            connectivity=self.connectivity,
            expansion_add=self.expansion_add,
            expansion_search=self.expansion_search,
        )

    def upsert(self, ids: Sequence[int], vectors: np.ndarray, scope: str) -> None:
        v = check_vectors(vectors, self.dims)
        keys = np.asarray(ids, dtype=np.uint64)
        with self._lock:
            self._delete_locked([int(i) for i in keys if int(i) in self._where])
            index = self._scopes.get(scope)
            if index is None:
                index = self._scopes[scope] = self._new()
            index.add(keys, v, threads=1)
            for i in keys:
                self._where[int(i)] = scope

    def search(self, vector: np.ndarray, k: int, scope: str) -> list[tuple[int, float]]:
        q = check_vectors(vector, self.dims)[0]
        with self._lock:
            index = self._scopes.get(scope)
            if index is None or len(index) == 0:
                return []
            m = index.search(q, k, threads=1)
        return [(int(key), 1.0 - float(d)) for key, d in zip(m.keys, m.distances)]

    def _delete_locked(self, ids: Iterable[int]) -> int:
        removed = 0
        for i in ids:
            scope = self._where.pop(int(i), None)
            if scope is not None:
                self._scopes[scope].remove(int(i))
                removed += 1
        return removed

    def _scope_size(self, scope: str) -> int:
        index = self._scopes.get(scope)
        return 0 if index is None else len(index)

    def memory_bytes(self) -> int:
        return sum((int(ix.memory_usage) for ix in self._scopes.values()), 0)

    # -- persistence ------------------------------------------------------------------
    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        manifest: dict[str, Any] = {"dims": self.dims, "dtype": self.dtype, "scopes": {}}
        with self._lock:
            for n, (scope, index) in enumerate(self._scopes.items()):
                path = folder / f"scope-{n}.usearch"
                index.save(str(path))
                manifest["scopes"][scope] = {"file": path.name, "sha256": _sha256(path)}
        tmp = folder / "manifest.json.tmp"
        tmp.write_text(json.dumps(manifest))
        tmp.replace(folder / "manifest.json")

    @classmethod
    def load(cls, folder: str | Path, **kw) -> "HNSWIndex":
        from usearch.index import Index

        folder = Path(folder)
        try:
            manifest = json.loads((folder / "manifest.json").read_text())
        except (OSError, ValueError) as exc:
            raise CorruptIndexError(f"index manifest in {folder} is unreadable: {exc}") from None
        self = cls(manifest["dims"], dtype=manifest["dtype"], **kw)
        for scope, meta in manifest["scopes"].items():
            path = folder / meta["file"]
            if not path.exists() or _sha256(path) != meta["sha256"]:
                raise CorruptIndexError(f"index file {path} is missing or damaged; rebuild it from the entry store")
            index = Index.restore(str(path))
            if index is None:
                raise CorruptIndexError(f"index file {path} could not be read")
            index.expansion_search = self.expansion_search  # type: ignore[misc]  # usearch types it read-only; it is settable
            self._scopes[scope] = index
            for key in index.keys:
                self._where[int(key)] = scope
        return self


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
