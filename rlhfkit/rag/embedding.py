"""The query and document encoder: sentence-transformers on the embedded MiniLM
(`minilm-l6`, offline) or any sentence-transformers hub id or folder.

Embeddings are L2-normalised, so cosine similarity is their dot product. Each
model also has a fingerprint: its embedding of a fixed probe sentence. An index
records the fingerprint of the model that built it, so a database is never
queried with vectors from another model, whatever the model is called.
"""

from __future__ import annotations

import contextlib
import functools
import time

import numpy as np

from rlhfkit.errors import UserError

DEFAULT_EMBEDDER = "minilm-l6"
_PROBE = "Retrieval-augmented generation answers questions from documents found by meaning."
FINGERPRINT_MIN_COSINE = 0.99  # the same weights on another machine agree to ~1e-6


class Embedder:
    def __init__(self, name: str = DEFAULT_EMBEDDER, device: str = "cpu", batch_size: int = 32):
        self.name = name
        self.batch_size = batch_size
        self.model = _load(name, device)
        self.tokenizer = self.model.tokenizer
        specials = self.tokenizer.num_special_tokens_to_add(False) if hasattr(
            self.tokenizer, "num_special_tokens_to_add") else 2
        self.max_tokens = int(self.model.max_seq_length) - specials
        self.dim = int(self.model.get_embedding_dimension())

    def describe(self) -> str:
        return f"{self.name} ({self.dim}-dim, {self.max_tokens} tokens)"

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    @functools.cached_property
    def fingerprint(self) -> list[float]:
        return [round(float(x), 6) for x in self.encode_documents([_PROBE], progress=False)[0]]

    def matches(self, fingerprint: list[float]) -> bool:
        if len(fingerprint) != self.dim:
            return False
        return float(np.dot(np.asarray(fingerprint, dtype=np.float32), np.asarray(self.fingerprint, dtype=np.float32))) \
            >= FINGERPRINT_MIN_COSINE

    def encode_documents(self, texts: list[str], progress: bool = False) -> np.ndarray:
        """[N, dim] float32 unit vectors (the model's document prompt, if it has one)."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = self.model.encode_document(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                                         convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(out, dtype=np.float32)

    def encode_query(self, text: str) -> np.ndarray:
        """[dim] float32 unit vector (the model's query prompt, if it has one). A query longer
        than the model takes is truncated to its first `max_tokens` tokens by the encoder."""
        with _one_thread():
            out = self.model.encode_query([text], normalize_embeddings=True, convert_to_numpy=True,
                                          show_progress_bar=False)
        return np.asarray(out[0], dtype=np.float32)


@contextlib.contextmanager
def _one_thread():
    """One intra-op thread for a single short query: a pool of threads only waits on itself there,
    and on a busy CPU badly (measured on 2 busy cores: 1.9 s per query with 2 threads, 0.2 s with 1)."""
    import torch

    before = torch.get_num_threads()
    if before > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if before > 1:
            torch.set_num_threads(before)


@functools.lru_cache(maxsize=4)
def _load(name: str, device: str):
    from sentence_transformers import SentenceTransformer

    from rlhfkit.models import resolve

    path = resolve(name)
    started = time.perf_counter()
    try:
        model = SentenceTransformer(path, device=device)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load embedding model '{name}': {str(e).splitlines()[0]}; use minilm-l6 (embedded), "
                        "a sentence-transformers folder, or a hub id with network access") from None
    model.eval()
    model._rlhfkit_load_seconds = time.perf_counter() - started
    return model


def get_embedder(name: str = DEFAULT_EMBEDDER, device: str = "cpu", batch_size: int = 32) -> Embedder:
    """An Embedder; the underlying model is loaded once per process and name."""
    return Embedder(name, device=device, batch_size=batch_size)


def check_embedder(meta, embedder: Embedder, url: str, fix: str) -> None:
    """Refuse an index (`meta`: its stores.Meta) built with another embedding model (another dimension
    or fingerprint)."""
    from rlhfkit.rag.stores import safe_url as _safe_url

    if meta.dim == embedder.dim and embedder.matches(meta.fingerprint):
        return
    raise UserError(f"the index {_safe_url(url)} was built with embedding model '{meta.embedder}' ({meta.dim}-dim) "
                    f"and this run embeds with '{embedder.name}' ({embedder.dim}-dim"
                    f"{', other weights' if meta.dim == embedder.dim else ''}); vectors of two models cannot be "
                    f"compared: {fix}")
