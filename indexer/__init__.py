"""Embeddings and the similar-incident index.

Plain data in, plain data out: no HTTP, rules or database here. Importing builds nothing; the
model loads in `SentenceTransformerEmbedder.offline()`.
"""
from indexer.embedder import Embedder, HashingEmbedder, SentenceTransformerEmbedder, normalise_text
from indexer.index import Hit, IncidentIndex

__all__ = [
    "Embedder",
    "HashingEmbedder",
    "Hit",
    "IncidentIndex",
    "SentenceTransformerEmbedder",
    "normalise_text",
]
