"""The key/value cache for incremental decoding.

When generating token t, the keys and values of tokens 0..t-1 do not change, so
each decoder layer keeps them and computes only the new token's. This turns a
quadratic recomputation per step into a linear one. The buffers are allocated
once for the whole generation (no growing copies), so each step writes one slot.

For encoder-decoder models the cross-attention keys and values, computed once
from the encoder output, are kept here too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class KVCache:
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    length: int = 0
    cross: list[tuple[torch.Tensor, torch.Tensor] | None] = field(default_factory=list)

    @classmethod
    def allocate(
        cls,
        n_layer: int,
        batch_size: int,
        n_kv_head: int,
        max_len: int,
        d_head: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> KVCache:
        shape = (batch_size, n_kv_head, max_len, d_head)
        return cls(
            keys=[torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layer)],
            values=[torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layer)],
            cross=[None] * n_layer,
        )

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new keys/values [B, H_kv, T, d] after the cached ones; return all of them so far."""
        end = self.length + k.shape[2]
        if end > self.capacity:
            raise ValueError(f"KV cache holds {self.capacity} positions, {end} requested")
        self.keys[layer][:, :, self.length : end] = k
        self.values[layer][:, :, self.length : end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def advance(self, n_tokens: int) -> None:
        """Called once per forward pass, after every layer has written its n_tokens new slots."""
        self.length += n_tokens

    def reorder(self, index: torch.Tensor) -> None:
        """Keep batch rows `index` (beam search reorders hypotheses each step)."""
        self.keys = [k.index_select(0, index) for k in self.keys]
        self.values = [v.index_select(0, index) for v in self.values]
        self.cross = [None if c is None else (c[0].index_select(0, index), c[1].index_select(0, index))
                      for c in self.cross]


class SlotCache:
    """A static KV cache of `slots` independent sequences, for continuous batching.

    Each slot holds one request's keys and values [n_kv_head, capacity, d_head] per layer and its own
    length; slots are allocated once and reused as requests come and go (the paged/slotted cache of
    serving engines such as vLLM, Kwon et al. 2023, without the paging). A forward pass runs either
    one prompt chunk of one slot (`prefill`) or one new token for each of the first n slots
    (`decode`). Each pass attends to the keys written so far, never to the whole capacity: a row
    sees the positions below its own length and, within a chunk, the earlier tokens of the chunk.
    """

    def __init__(self, n_layer: int, slots: int, n_kv_head: int, capacity: int, d_head: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> None:
        shape = (slots, n_kv_head, capacity, d_head)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layer)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layer)]
        self.lengths = [0] * slots
        self.dtype, self.device = dtype, torch.device(device)
        self._key_positions = torch.arange(capacity, device=device)
        # Set by prefill / decode for the next forward pass:
        self.positions = torch.zeros(1, 1, dtype=torch.long, device=device)
        self.mask: torch.Tensor | None = None
        self.is_causal = False
        self._rows = slice(0, 1)
        self._write_at: torch.Tensor | int = 0  # a position (one row), or flat (row, head, position) indices
        self._n_keys = 0
        self._advance: list[int] = []

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2]

    @property
    def slots(self) -> int:
        return self.keys[0].shape[0]

    def prefill(self, slot: int, n_tokens: int) -> None:
        """Prepare a pass of `n_tokens` prompt tokens of one slot, after the ones it holds.

        Query i (position start + i) may attend to keys 0 .. start + i: the cached prefix and the
        chunk's causal part. From an empty slot that is plain causal attention.
        """
        start = self.lengths[slot]
        end = start + n_tokens
        if end > self.capacity:
            raise ValueError(f"slot holds {self.capacity} positions, {end} requested")
        self._rows, self._write_at, self._n_keys = self._row_range(slot, slot + 1), start, end
        self.positions = torch.arange(start, end, device=self.device)[None]
        self.is_causal = start == 0 and n_tokens > 1
        self.mask = None
        if start > 0 and n_tokens > 1:
            allowed = self._key_positions[None, :end] <= self.positions[0, :, None]
            self.mask = self._additive(allowed[None, None])
        self._advance = [0] * self.slots
        self._advance[slot] = n_tokens

    def decode(self, n_rows: int, active: list[bool]) -> None:
        """Prepare a pass of one new token for each of slots 0 .. n_rows-1 (a view, no copy).

        Rows not `active` (free slots, or slots still prefilling) run along on a dummy token; their
        cache is not advanced, so what they write is overwritten later.
        """
        lengths = self.lengths[:n_rows]
        self._rows, self._n_keys = self._row_range(0, n_rows), max(lengths) + 1
        if self._n_keys > self.capacity:
            raise ValueError(f"slot holds {self.capacity} positions, {self._n_keys} requested")
        starts = torch.tensor(lengths, device=self.device)
        self.positions = starts[:, None]
        if n_rows == 1:  # one row writes a slice, no scatter
            self._write_at = lengths[0]
        else:  # row r, head h writes at position starts[r]: one index into the [slots * heads * capacity] rows
            heads = torch.arange(self.keys[0].shape[1], device=self.device)
            rows = torch.arange(n_rows, device=self.device)[:, None] * len(heads) + heads
            self._write_at = (rows * self.capacity + starts[:, None]).reshape(-1)
        self.is_causal = False
        self.mask = None
        if min(lengths) + 1 < self._n_keys:
            allowed = self._key_positions[None, : self._n_keys] <= starts[:, None]
            self.mask = self._additive(allowed[:, None, None])
        self._advance = [int(a) for a in active] + [0] * (self.slots - n_rows)

    def _row_range(self, start: int, end: int) -> slice:
        """Rows start .. end-1; all of them as `:`, which indexes without an operator call."""
        return slice(None) if start == 0 and end == self.slots else slice(start, end)

    def _additive(self, allowed: torch.Tensor) -> torch.Tensor:
        mask = torch.zeros(allowed.shape, dtype=self.dtype, device=self.device)
        return mask.masked_fill_(~allowed, torch.finfo(self.dtype).min)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the pass's new keys/values [B, H_kv, T, d]; return the keys/values it attends to."""
        keys, values = self.keys[layer], self.values[layer]
        if isinstance(self._write_at, int):
            end = self._write_at + k.shape[2]
            keys[self._rows, :, self._write_at : end] = k
            values[self._rows, :, self._write_at : end] = v
        else:  # index_copy_ of whole rows: advanced indexing over (slot, position) takes a slow scatter
            d_head = keys.shape[-1]
            keys.view(-1, d_head).index_copy_(0, self._write_at, k.reshape(-1, d_head))
            values.view(-1, d_head).index_copy_(0, self._write_at, v.reshape(-1, d_head))
        return keys[self._rows, :, : self._n_keys], values[self._rows, :, : self._n_keys]

    def advance(self, n_tokens: int) -> None:
        """Called once per forward pass: the rows that took part for real now hold their new tokens."""
        self.lengths = [length + a for length, a in zip(self.lengths, self._advance)]
