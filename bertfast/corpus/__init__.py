"""Corpus embedding: ``bertfast embed --input FILE... --output DIR``.

Files in (plain text, JSON Lines, CSV / TSV), shards of vectors out with ids and a manifest;
resumable, and split across processes under torchrun. Imports the model; never imported by it.
"""

from bertfast.corpus.embed import EmbedOptions, embed_corpus
from bertfast.corpus.readers import BadInputError, read_records
from bertfast.corpus.writer import load_embeddings

__all__ = ["BadInputError", "EmbedOptions", "embed_corpus", "load_embeddings", "read_records"]
