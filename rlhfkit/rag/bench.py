"""Measure the RAG index: indexing chunks/s on real documents, query latency at 10k / 100k chunks.

    python -m rlhfkit.rag.bench --out rag_bench.json [--pg postgresql+psycopg://...]

1. Indexing: copies real Markdown and text files (by default the documentation
   that ships inside the installed Python packages and /usr/share/doc) until
   about `--chunks` chunks, and indexes them with `index_documents` (MiniLM,
   200-token chunks, 40 overlap) into a fresh SQLite index: chunks/s of the
   embedding step and of the whole run.
2. Query latency: fills a store with N chunks for each N in `--sizes`: the real
   chunks and their real embeddings, then (past the real ones) copies of their
   texts whose vectors mix two real vectors (the chunk's own plus 0.6 times a
   random other's, plus a little Gaussian noise, renormalised): N distinct
   vectors spread like real ones, not near-duplicates that tie. Then
   `--queries` real questions (the shipped QA set's, then the first sentence
   of random real chunks) are searched: the query embedding and the store's
   k-nearest-neighbour search are timed apart, p50/p95 of each and of both.
   For pgvector also the share of the exact top-k (sqlite-vec's) its HNSW
   index returns.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _default_roots() -> list[str]:
    import sysconfig

    return [sysconfig.get_paths()["purelib"], "/usr/share/doc"]


def collect_corpus(roots: list[str], out: Path, max_bytes: int, seed: int = 0) -> list[Path]:
    """Copy real .md/.txt files of 2-200 kB (licences and changelogs left out) into `out`."""
    found = []
    for root in roots:
        for dirpath, _, names in os.walk(root):
            for name in names:
                low = name.lower()
                if not low.endswith((".md", ".txt")) or any(w in low for w in ("license", "licence", "copying",
                                                                               "changelog", "changes", "history",
                                                                               "record", "top_level", "entry_points",
                                                                               "requires", "sources")):
                    continue
                p = Path(dirpath) / name
                try:
                    size = p.stat().st_size
                except OSError:
                    continue
                if 2_000 <= size <= 200_000:
                    found.append(p)
    random.Random(seed).shuffle(found)
    out.mkdir(parents=True, exist_ok=True)
    copied, total = [], 0
    for i, p in enumerate(found):
        if total >= max_bytes:
            break
        try:
            data = p.read_bytes()
            data.decode("utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        target = out / f"{i:05d}-{p.name}"
        target.write_bytes(data)
        copied.append(target)
        total += len(data)
    return copied


def _percentiles(values: list[float]) -> dict:
    ms = sorted(v * 1000 for v in values)
    q = statistics.quantiles(ms, n=100, method="inclusive")
    return {"p50_ms": round(q[49], 2), "p95_ms": round(q[94], 2), "mean_ms": round(statistics.fmean(ms), 2)}


def _read_index(url: str):
    from rlhfkit.rag.stores import StoredChunk, open_store

    store = open_store(url)
    rows = store.conn.execute("SELECT c.id, c.path, c.doc, c.position, c.title, c.text, c.line_start, c.line_end, "
                              "v.embedding FROM rag_chunks c JOIN rag_vectors v ON v.rowid = c.id ORDER BY c.id").fetchall()
    store.close()
    chunks = [StoredChunk(*r[1:8]) for r in rows]
    vectors = np.stack([np.frombuffer(r[8], dtype=np.float32) for r in rows])
    return chunks, vectors


def fill_store(url: str, chunks, vectors, n: int, noise: float, seed: int = 0) -> float:
    """A fresh store of `n` chunks (real ones, then noisy copies); returns the seconds it took to write."""
    from rlhfkit.rag.stores import FileUpdate, Meta, StoredChunk, open_store

    rng = np.random.default_rng(seed)
    real = len(chunks)
    store = open_store(url)
    dim = vectors.shape[1]
    meta = Meta("minilm-l6", dim, [0.0] * dim)
    started = time.perf_counter()
    per_file = 1000
    first = True
    for start in range(0, n, per_file):
        idx = np.arange(start, min(start + per_file, n))
        src = idx % real
        vecs = vectors[src].copy()
        copies = idx >= real
        if copies.any():
            m = int(copies.sum())
            other = vectors[rng.integers(0, real, size=m)]
            vecs[copies] += 0.6 * other + rng.normal(0, noise, size=(m, dim)).astype(np.float32)
            vecs[copies] /= np.linalg.norm(vecs[copies], axis=1, keepdims=True)
        path = f"/bench/file-{start // per_file:04d}"
        items = [StoredChunk(path, path, j, chunks[s].title, chunks[s].text, 1, 1) for j, s in enumerate(src)]
        store.write([FileUpdate(path, "h", "bench", items, vecs)], meta=meta, reset=first)
        first = False
    seconds = time.perf_counter() - started
    store.close()
    return seconds


def time_queries(url: str, embedder, questions: list[str], k: int) -> tuple[dict, list[list[str]]]:
    from rlhfkit.rag.stores import open_store

    store = open_store(url)
    embed_s, search_s, results = [], [], []
    for q in questions[:3]:  # warm caches (page cache, mmap, HNSW pages)
        store.search(embedder.encode_query(q), k)
    for q in questions:
        t0 = time.perf_counter()
        v = embedder.encode_query(q)
        t1 = time.perf_counter()
        hits = store.search(v, k)
        t2 = time.perf_counter()
        embed_s.append(t1 - t0)
        search_s.append(t2 - t1)
        results.append([f"{h.chunk.path}:{h.chunk.position}" for h in hits])
    store.close()
    return {"search": _percentiles(search_s), "query_embedding": _percentiles(embed_s),
            "end_to_end": _percentiles([a + b for a, b in zip(embed_s, search_s)])}, results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--roots", nargs="+", default=None, help="folders to take real documents from")
    parser.add_argument("--corpus-bytes", type=int, default=2_200_000, help="bytes of documents to index (~3k chunks)")
    parser.add_argument("--sizes", nargs="+", type=int, default=[10_000, 100_000])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--noise", type=float, default=0.01, help="per-dimension noise of the mixed vectors")
    parser.add_argument("--pg", default=os.environ.get("RLHFKIT_TEST_PG_URL"), help="also measure pgvector here "
                        "(its rag_ tables are dropped)")
    parser.add_argument("--work", default=None, help="working folder (default: a temporary one, removed)")
    parser.add_argument("--out", default="rag_bench.json")
    args = parser.parse_args(argv)

    import torch

    from rlhfkit.rag import SAMPLE_QA
    from rlhfkit.rag.embedding import get_embedder
    from rlhfkit.rag.evaluation import load_qa
    from rlhfkit.rag.indexing import index_documents

    work = Path(args.work or tempfile.mkdtemp(prefix="rag-bench-"))
    results: dict = {"cpu_threads": torch.get_num_threads(), "os_cpus": os.cpu_count(),
                     "loadavg_start": os.getloadavg()}
    try:
        corpus = collect_corpus(args.roots or _default_roots(), work / "corpus", args.corpus_bytes)
        print(f"bench: {len(corpus)} real documents, {sum(p.stat().st_size for p in corpus) / 1e6:.2f} MB",
              file=sys.stderr)
        embedder = get_embedder("minilm-l6")
        url = f"sqlite:///{work / 'index.db'}"
        report = index_documents([str(work / "corpus")], url, embedder=embedder, model="smollm2-135m")
        results["indexing"] = {"files": report.files, "skipped": len(report.skipped), "chunks": report.chunks_embedded,
                               "embed_seconds": round(report.embed_seconds, 1),
                               "embed_chunks_per_s": round(report.chunks_per_second, 1),
                               "total_seconds": round(report.seconds, 1),
                               "total_chunks_per_s": round(report.chunks_embedded / report.seconds, 1),
                               "write_seconds": round(report.write_seconds, 2), "corpus_bytes":
                                   sum(p.stat().st_size for p in corpus)}
        print(f"bench: indexing {json.dumps(results['indexing'])}", file=sys.stderr)
        chunks, vectors = _read_index(url)
        tokens = [embedder.count_tokens(c.content) for c in chunks[:500]]
        results["indexing"]["mean_chunk_tokens"] = round(statistics.fmean(tokens), 1)

        questions = [i.question for i in load_qa(SAMPLE_QA)]
        rng = random.Random(1)
        while len(questions) < args.queries:
            text = rng.choice(chunks).text
            questions.append(text.split(". ")[0][:200])
        questions = questions[:args.queries]

        results["latency"] = {}
        for n in args.sizes:
            entry = {}
            db = f"sqlite:///{work / f'store-{n}.db'}"
            entry["sqlite_vec_write_seconds"] = round(fill_store(db, chunks, vectors, n, args.noise), 1)
            entry["sqlite_vec"], exact = time_queries(db, embedder, questions, args.k)
            entry["sqlite_vec_file_mb"] = round(Path(db[len("sqlite:///"):]).stat().st_size / 1e6, 1)
            if args.pg:
                entry["pgvector_write_seconds"] = round(fill_store(args.pg, chunks, vectors, n, args.noise), 1)
                entry["pgvector"], approx = time_queries(args.pg, embedder, questions, args.k)
                overlap = [len(set(a) & set(b)) / args.k for a, b in zip(exact, approx)]
                entry["pgvector_hnsw_recall_vs_exact"] = round(statistics.fmean(overlap), 4)
            results["latency"][str(n)] = entry
            print(f"bench: {n} chunks {json.dumps(entry)}", file=sys.stderr)
        if args.pg:
            from rlhfkit.rag.stores import open_store

            store = open_store(args.pg)
            store.conn.execute("DROP TABLE IF EXISTS rag_chunks, rag_files, rag_meta")
            store.close()
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    results["loadavg_end"] = os.getloadavg()
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
