"""``prepare``: heterogeneous medical corpora -> one clean, filtered, deduplicated, chunked JSONL.

Modules, one concern each:
    config     Source (a file: kind, language, fields, format) and PrepareConfig (filters, dedup, chunking)
    readers    streaming JSONL / JSON / TXT / Parquet / datasets.save_to_disk readers, UTF-8 or GB18030
    text       cleaning and the CJK/Latin statistics; units (CJK characters, words)
    filters    length, letter ratio, language (script ratio), repeated lines, repeated n-grams, medical terms
    dedup      exact keys, MinHash signatures of character (zh) / word (en) shingles, the in-order deduplicator
    chunking   long documents split at sentence ends
    pipeline   the shard pass (multi-core) and the merge; ``run`` = both, unsharded
Usage and file formats: ``docs/preprocessing.md``.
"""
from preprocessing.prepare.chunking import chunk
from preprocessing.prepare.config import InputError, PrepareConfig, Source, load_sources
from preprocessing.prepare.pipeline import REASONS, merge, run, run_shard
from preprocessing.prepare.readers import detect_encoding, read_source
from preprocessing.prepare.text import clean

__all__ = ["InputError", "PrepareConfig", "Source", "REASONS", "chunk", "clean", "detect_encoding", "load_sources",
           "merge", "read_source", "run", "run_shard"]
