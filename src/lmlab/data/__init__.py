"""Data: read, clean, deduplicate, tokenize and pack a corpus; mix domains; build objective batches.

- :mod:`~lmlab.data.readers`: documents from .txt/.jsonl/.json/.csv/.parquet files and folders.
- :mod:`~lmlab.data.cleaning`: normalization, Gopher quality rules, exact and MinHash near-dedup.
- :mod:`~lmlab.data.packing`: memory-mapped token shards, manifest, `PackedDataset`, `load_prepared`.
- :mod:`~lmlab.data.pipeline`: `prepare` / `prepare_documents`, the whole funnel in one call.
- :mod:`~lmlab.data.mixture`: weighted sampling across prepared datasets (`--mix a=0.51,b=0.49`).
- :mod:`~lmlab.data.collators`: causal LM, masked LM (BERT) and span corruption (T5) batches.
- :mod:`~lmlab.data.corpus`: the corpus lmlab ships, written by a seeded grammar.
- :mod:`~lmlab.data.finetune_data`: the labelled, chat and preference sets fine-tuning and alignment read;
  :mod:`~lmlab.data.task_files` reads the task formats (label lines, CoNLL, SQuAD).
"""

from lmlab.data.collators import CausalLMCollator, MaskedLMCollator, SpanCorruptionCollator
from lmlab.data.corpus import default_corpus, default_documents
from lmlab.data.mixture import Mixture, MixtureSampler, load_mixture, parse_mix
from lmlab.data.packing import PackedDataset, PreparedData, load_prepared
from lmlab.data.pipeline import PrepareSettings, prepare, prepare_documents

__all__ = [
    "CausalLMCollator",
    "MaskedLMCollator",
    "Mixture",
    "MixtureSampler",
    "PackedDataset",
    "PrepareSettings",
    "PreparedData",
    "SpanCorruptionCollator",
    "default_corpus",
    "default_documents",
    "load_mixture",
    "load_prepared",
    "parse_mix",
    "prepare",
    "prepare_documents",
]
