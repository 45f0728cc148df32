"""Peers run side by side in the cache benchmark, on the same queries and embeddings.

GPTCache 0.1.44 (``pip install sqlalchemy faiss-cpu gptcache==0.1.44``): SQLite scalar
store, FAISS vector store, ``SearchDistanceEvaluation`` (its default). Its score is
``(4 - squared L2) / 4`` on unit vectors, i.e. ``(1 + cos) / 2``: a GPTCache threshold t
means cosine >= 2t - 1, so its default 0.8 is cosine >= 0.6.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def gptcache_threshold_for_cosine(cos: float) -> float:
    return (1.0 + cos) / 2.0


def run_gptcache(queries, vectors: np.ndarray, threshold: float, correct) -> dict:
    """Stream the queries through a real GPTCache; on a miss ``put`` the query's answer."""
    try:
        from gptcache import Cache, Config
        from gptcache.adapter.api import get, put
        from gptcache.manager import CacheBase, VectorBase, get_data_manager
        from gptcache.processor.pre import get_prompt
        from gptcache.similarity_evaluation.distance import SearchDistanceEvaluation
    except ImportError as exc:
        return {
            "peer": "gptcache",
            "error": f"not installed ({exc}); pip install sqlalchemy faiss-cpu gptcache==0.1.44",
        }
    by_text = {}
    for q, v in zip(queries, vectors):
        by_text.setdefault(q.text, v)
    # GPTCache flushes its stores in an atexit hook: the folder must outlive this call, so it
    # is removed by a hook registered before GPTCache's (atexit runs hooks last-in, first-out).
    d = tempfile.mkdtemp(prefix="truecost-gptcache-")
    atexit.register(shutil.rmtree, d, True)
    cache = Cache()
    # max_size: GPTCache evicts beyond 1,000 entries by default; ours keeps every entry in
    # the benchmark, so GPTCache gets the same capacity and only the threshold differs.
    dm = get_data_manager(
        CacheBase("sqlite", sql_url=f"sqlite:///{Path(d) / 'gptcache.db'}"),
        VectorBase("faiss", dimension=vectors.shape[1], index_path=str(Path(d) / "faiss.index")),
        max_size=len(queries) + 1,
    )
    cache.init(
        pre_embedding_func=get_prompt,
        embedding_func=lambda text, **_: by_text[text].astype("float32"),
        data_manager=dm,
        similarity_evaluation=SearchDistanceEvaluation(),
        config=Config(similarity_threshold=threshold, disable_report=True),
    )
    hits = false_hits = 0
    ms = []
    for i, q in enumerate(queries):
        t0 = time.perf_counter()
        answer = get(q.text, cache_obj=cache)
        ms.append((time.perf_counter() - t0) * 1e3)
        if answer is not None:
            hits += 1
            false_hits += not correct(q, answer)
        else:
            put(q.text, f"oos#{i}" if q.intent == "oos" else q.intent, cache_obj=cache)
    n = len(queries)
    return {
        "peer": "gptcache 0.1.44",
        "threshold": threshold,
        "max_size": len(queries) + 1,
        "cosine_equivalent": round(2 * threshold - 1, 4),
        "hit_rate": hits / n,
        "false_hit_rate": false_hits / n,
        "hits": hits,
        "false_hits": false_hits,
        "lookup_ms_p50_excluding_embedding": float(np.percentile(ms, 50)),
        "lookup_ms_p99_excluding_embedding": float(np.percentile(ms, 99)),
    }
