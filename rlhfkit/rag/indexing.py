"""`index_documents`: files into an index, incrementally and safely.

A file is (re-)embedded only when its content hash or the chunking changed
since it was indexed; files under the given folders that are gone (or now
empty) lose their chunks; files elsewhere in the index are left alone.

Safe to interrupt: vectors are computed first, then each batch of whole files
is written in one transaction (`VectorStore.write`), so a search sees every
file either as it was or as it is now, never half of it. A run stopped
anywhere keeps the batches it committed; the next run skips those files (their
hashes match) and does the rest. `rebuild=True` re-embeds everything and
swaps it in with one transaction at the end: until then the old index serves.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

import numpy as np

from rlhfkit.errors import UserError
from rlhfkit.rag.chunking import Chunker, TokenLimit
from rlhfkit.rag.documents import SkippedFile, content_hash, find_files, parse, read_bytes, under_roots
from rlhfkit.rag.embedding import DEFAULT_EMBEDDER, Embedder, check_embedder, get_embedder
from rlhfkit.rag.stores import FileUpdate, Meta, StoredChunk, VectorStore, open_store, safe_url

DEFAULT_CHUNK_TOKENS = 200
DEFAULT_OVERLAP = 40


@dataclass
class IndexReport:
    files: int = 0
    new: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    unchanged: int = 0
    removed: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # (path, "empty"|"unreadable", reason)
    chunks_embedded: int = 0
    embed_seconds: float = 0.0
    read_seconds: float = 0.0
    write_seconds: float = 0.0
    seconds: float = 0.0
    total_files: int = 0
    total_chunks: int = 0
    store: str = ""

    @property
    def chunks_per_second(self) -> float:
        return self.chunks_embedded / self.embed_seconds if self.embed_seconds else 0.0

    def summary(self) -> str:
        kinds = {}
        for _, kind, _ in self.skipped:
            kinds[kind] = kinds.get(kind, 0) + 1
        skipped = f"{len(self.skipped)} skipped" + (
            f" ({', '.join(f'{n} {k}' for k, n in sorted(kinds.items()))})" if self.skipped else "")
        rate = f" ({self.chunks_per_second:.1f} chunks/s)" if self.chunks_embedded else ""
        return (f"{self.files} files: {len(self.new)} new, {len(self.changed)} changed, {self.unchanged} unchanged, "
                f"{len(self.removed)} removed, {skipped}; {self.chunks_embedded} chunks embedded in "
                f"{self.embed_seconds:.1f} s{rate}; {self.seconds:.1f} s in all; the index ({self.store}) holds "
                f"{self.total_chunks} chunks from {self.total_files} files")


def _warn(message: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(f"rlhfkit rag index: warning: {message}", file=sys.stderr)


def policy_limit(model: str, top_k: int, max_new_tokens: int) -> TokenLimit:
    """The policy's share of its context window for one of the top-k chunks, in its own tokens."""
    from rlhfkit.models import load_config, load_tokenizer
    from rlhfkit.rag.answering import context_window, prompt_overhead

    tokenizer = load_tokenizer(model)
    context = context_window(load_config(model), tokenizer)
    room = context - max_new_tokens - prompt_overhead(tokenizer, top_k)
    per_chunk = room // max(top_k, 1)
    if per_chunk < 16:
        raise UserError(f"{model}'s context of {context} tokens leaves {max(room, 0)} for {top_k} chunks after "
                        f"--max-new-tokens {max_new_tokens} and the instructions; lower --top-k or --max-new-tokens")
    return TokenLimit(tokenizer, per_chunk, f"policy {model}: context {context}, {max_new_tokens} new tokens, "
                                            f"top-{top_k}")


def index_documents(docs: list[str], db: str | VectorStore, embedder: str | Embedder | None = None,
                    chunk_tokens: int = DEFAULT_CHUNK_TOKENS, overlap: int = DEFAULT_OVERLAP, model: str | None = None,
                    top_k: int = 5, max_new_tokens: int = 256, rebuild: bool = False, progress: bool = True,
                    commit_every: int = 512, batch_size: int = 64) -> IndexReport:
    """Index files and folders (text, Markdown, JSONL) into `db`; returns what was done.

    `model` (a policy) adds its limit to the chunking: `top_k` chunks and `max_new_tokens`
    must fit its context window. `commit_every` chunks go into each transaction.
    """
    from tqdm.auto import tqdm

    started = time.perf_counter()
    report = IndexReport()
    store = open_store(db) if isinstance(db, str) else db
    url = db if isinstance(db, str) else store.url
    report.store = f"{store.kind} {safe_url(url)}"
    try:
        meta = store.meta()
        if isinstance(embedder, Embedder):
            emb = embedder
        else:
            emb = get_embedder(embedder or (meta.embedder if meta and not rebuild else DEFAULT_EMBEDDER),
                               batch_size=min(batch_size, 32))
        if meta is not None and not rebuild:
            check_embedder(meta, emb, url, f"pass --embedder {meta.embedder} (the model that built it), index into "
                                           f"another --db, or pass --rebuild to re-embed every file with "
                                           f"'{emb.name}'")
        if chunk_tokens > emb.max_tokens:
            _warn(f"--chunk-tokens {chunk_tokens} is more than {emb.name} takes; using {emb.max_tokens}")
            chunk_tokens = emb.max_tokens
        limits = (policy_limit(model, top_k, max_new_tokens),) if model else ()
        chunker = Chunker(emb.tokenizer, chunk_tokens, overlap, limits)
        signature = chunker.signature()
        new_meta = Meta(emb.name, emb.dim, emb.fingerprint,
                        chunking={"chunk_tokens": chunk_tokens, "overlap": overlap, "policy": model, "top_k": top_k,
                                  "max_new_tokens": max_new_tokens},
                        created=(meta.created if meta and not rebuild else ""))

        files, roots = find_files(docs)
        report.files = len(files)
        known = {} if rebuild else store.files()
        pending: list[tuple[str, str, list]] = []  # (path, hash, chunks)
        empties: list[str] = []
        for path in tqdm(files, desc="reading", unit="file", disable=not progress or len(files) < 50):
            key = str(path)
            try:
                data = read_bytes(path)
                digest = content_hash(data)
                state = known.get(key)
                if state is not None and state.content_hash == digest and state.chunking == signature:
                    report.unchanged += 1
                    continue
                chunks = chunker.chunk_sections(parse(path, data))
            except SkippedFile as e:
                report.skipped.append((key, e.kind, e.reason))
                kept = ""
                if key in known:
                    if e.kind == "empty":
                        empties.append(key)
                        kept = f"; its {known[key].chunks} chunks leave the index"
                    else:
                        kept = f"; its {known[key].chunks} chunks from the last readable version stay"
                _warn(f"skipped {key}: {e.reason}{kept}")
                continue
            (report.changed if key in known else report.new).append(key)
            pending.append((key, digest, chunks))
        seen = {str(p) for p in files}
        removed = [p for p in known if p not in seen and under_roots(p, roots)] + empties
        report.removed = removed
        report.read_seconds = time.perf_counter() - started

        total = sum(len(c) for _, _, c in pending)
        batch: list[FileUpdate] = []
        batch_chunks = 0

        def write(final: bool) -> None:
            nonlocal batch, batch_chunks
            t = time.perf_counter()
            store.write(batch, removed=removed if final else (), meta=new_meta, reset=rebuild)
            report.write_seconds += time.perf_counter() - t
            batch, batch_chunks = [], 0

        with tqdm(total=total, desc="embedding", unit="chunk", disable=not progress or total == 0) as bar:
            for key, digest, chunks in pending:
                vectors = []
                t = time.perf_counter()
                for start in range(0, len(chunks), batch_size):
                    part = chunks[start:start + batch_size]
                    vectors.append(emb.encode_documents([c.content for c in part]))
                    bar.update(len(part))
                report.embed_seconds += time.perf_counter() - t
                stored = [StoredChunk(key, c.doc, c.position, c.title, c.text, c.line_start, c.line_end) for c in chunks]
                batch.append(FileUpdate(key, digest, signature, stored, np.concatenate(vectors)))
                batch_chunks += len(chunks)
                report.chunks_embedded += len(chunks)
                if not rebuild and batch_chunks >= commit_every:
                    write(final=False)
        if batch or removed or rebuild:
            write(final=True)
        report.total_files, report.total_chunks = store.counts()
    finally:
        if isinstance(db, str):
            store.close()
    report.seconds = time.perf_counter() - started
    return report
