"""lmlab's transformer, one idea per module: positions, attention, feed-forward, norms, heads, cache."""

from lmlab.models.cache import KVCache, SlotCache
from lmlab.models.transformer import ModelOutput, Transformer

__all__ = ["KVCache", "SlotCache", "ModelOutput", "Transformer"]
