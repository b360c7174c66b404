"""Domain mixtures: one training stream drawn from several prepared datasets, each with a weight.

BloombergGPT (Wu et al. 2023, "BloombergGPT: A Large Language Model for
Finance", Table 1) trained on 51% financial and 49% general-purpose tokens.
Here each sequence of the stream comes from dataset d with probability w_d
(weights sum to 1), so in expectation a share w_d of the tokens is from d
(every prepared sequence has the same length). Within a dataset, sequences are
taken in a seeded random order that is reshuffled on every pass, so a small
dataset with a large weight is repeated (and the report says how many times).

`MixtureSampler` is a torch Sampler over the concatenation of the datasets:
draw i depends only on (seed, i), so a run resumed at draw k with
``start=k`` sees exactly the stream it would have seen.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch.utils.data import ConcatDataset, Sampler

from lmlab.data.packing import PackedDataset, PreparedData, load_prepared
from lmlab.errors import LmlabError, did_you_mean

WEIGHT_TOLERANCE = 1e-6


def parse_mix(spec: str) -> dict[str, float]:
    """Parse ``finance=0.51,general=0.49`` into {"finance": 0.51, "general": 0.49}, checking the weights."""
    weights: dict[str, float] = {}
    for part in spec.split(","):
        name, sep, value = part.strip().partition("=")
        name = name.strip()
        if not sep or not name:
            raise LmlabError(f"mix entry {part.strip()!r} is not NAME=WEIGHT (e.g. finance=0.51,general=0.49)")
        if name in weights:
            raise LmlabError(f"mix names {name!r} twice")
        try:
            weights[name] = float(value)
        except ValueError:
            raise LmlabError(f"mix weight for {name!r} is not a number: {value.strip()!r}") from None
    check_weights(weights)
    return weights


def check_weights(weights: Mapping[str, float], available: Sequence[str] | None = None) -> None:
    """Weights must be non-negative, sum to 1 (within 1e-6), and name only `available` datasets."""
    for name, weight in weights.items():
        if available is not None and name not in available:
            known = ", ".join(available)
            raise LmlabError(f"mix names unknown dataset {name!r}{did_you_mean(name, available)}; known: {known}")
        if not math.isfinite(weight) or weight < 0:
            raise LmlabError(f"mix weight for {name!r} must be a non-negative number, got {weight}")
    total = sum(weights.values())
    if abs(total - 1) > WEIGHT_TOLERANCE:
        listed = ", ".join(f"{n}={w:g}" for n, w in weights.items())
        raise LmlabError(f"mix weights sum to {total:.6g}, not 1: {listed}")


class MixtureSampler(Sampler[int]):
    """Indices into ConcatDataset(datasets in `sizes` order): each draw picks a dataset by weight, then its next
    sequence. `start` skips the first draws (resuming a run)."""

    def __init__(
        self, sizes: Mapping[str, int], weights: Mapping[str, float], num_samples: int, seed: int = 0, start: int = 0
    ):
        check_weights(weights, list(sizes))
        self.names = list(sizes)
        self.sizes = np.array([sizes[n] for n in self.names])
        for name, size in zip(self.names, self.sizes):
            if size == 0 and weights.get(name, 0) > 0:
                raise LmlabError(f"dataset {name!r} has no sequences but weight {weights[name]}")
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)[:-1]])
        self.probabilities = np.array([weights.get(n, 0.0) for n in self.names])
        self.num_samples = num_samples
        self.seed = seed
        self.start = start
        self.sources = np.random.default_rng([seed, 0]).choice(len(self.names), size=num_samples, p=self.probabilities)
        # The n-th draw from source s is position n of that source's pass-by-pass shuffled order.
        self.rank = np.zeros(num_samples, dtype=np.int64)
        for s in range(len(self.names)):
            picks = self.sources == s
            self.rank[picks] = np.arange(picks.sum())

    @staticmethod
    def bytes_for(num_samples: int) -> int:
        """Memory the draws take: a float64 uniform, an int64 source and an int64 rank per sample, and a
        boolean mask per sample while ranks are counted."""
        return 25 * num_samples

    def _sequence(self, source: int, rank: int) -> int:
        size = int(self.sizes[source])
        order = np.random.default_rng([self.seed, 1 + source, rank // size]).permutation(size)
        return int(self.offsets[source]) + int(order[rank % size])

    def __iter__(self) -> Iterator[int]:
        for i in range(self.start, self.num_samples):
            yield self._sequence(int(self.sources[i]), int(self.rank[i]))

    def __len__(self) -> int:
        return self.num_samples - self.start

    def counts(self) -> dict[str, int]:
        """How many of the num_samples draws come from each dataset."""
        return {name: int(n) for name, n in zip(self.names, np.bincount(self.sources, minlength=len(self.names)))}


@dataclass
class MixtureReport:
    """Target and realized token shares of a mixture, and how many passes over each dataset it makes."""

    names: list[str]
    target: dict[str, float]
    realized: dict[str, float]
    tokens: dict[str, int]
    epochs: dict[str, float]

    def format(self) -> str:
        lines = [f"{'dataset':<16}{'target':>9}{'realized':>10}{'tokens':>14}{'epochs':>9}"]
        for n in self.names:
            lines.append(
                f"{n:<16}{self.target[n]:>9.2%}{self.realized[n]:>10.2%}{self.tokens[n]:>14,}{self.epochs[n]:>9.2f}"
            )
        return "\n".join(lines)


@dataclass
class Mixture:
    """Several prepared datasets, their weights, and the sampled stream over one split."""

    prepared: dict[str, PreparedData]
    weights: dict[str, float]
    dataset: ConcatDataset
    sampler: MixtureSampler

    def report(self) -> MixtureReport:
        """Realized token proportions of the planned draws (each sequence carries seq_len target tokens)."""
        counts = self.sampler.counts()
        seq_len = next(iter(self.prepared.values())).seq_len
        tokens = {n: c * seq_len for n, c in counts.items()}
        total = sum(tokens.values()) or 1
        sizes = dict(zip(self.sampler.names, self.sampler.sizes))
        return MixtureReport(
            names=list(self.prepared),
            target={n: self.weights.get(n, 0.0) for n in self.prepared},
            realized={n: tokens[n] / total for n in self.prepared},
            tokens=tokens,
            epochs={n: counts[n] / sizes[n] if sizes[n] else 0.0 for n in self.prepared},
        )


def load_mixture(
    folders: Sequence[str | Path] | Mapping[str, str | Path],
    weights: Mapping[str, float],
    num_samples: int,
    split: str = "train",
    seed: int = 0,
    start: int = 0,
) -> Mixture:
    """Open prepared datasets (named by their manifests, or by the mapping's keys) and sample them by `weights`."""
    named = folders.items() if isinstance(folders, Mapping) else [(None, f) for f in folders]
    prepared: dict[str, PreparedData] = {}
    for name, folder in named:
        data = load_prepared(folder)
        name = name or data.name
        if name in prepared:
            raise LmlabError(f"two datasets are named {name!r} ({prepared[name].path} and {data.path}); rename one")
        prepared[name] = data
    check_weights(weights, list(prepared))
    first = next(iter(prepared.values()))
    for name, data in prepared.items():
        if data.seq_len != first.seq_len or data.manifest["tokenizer_digest"] != first.manifest["tokenizer_digest"]:
            raise LmlabError(
                f"datasets {first.name!r} and {name!r} were prepared with different tokenizers or sequence lengths; "
                "prepare them with the same --tokenizer and --seq-len"
            )
    parts: list[PackedDataset] = [getattr(data, split) for data in prepared.values()]
    sampler = MixtureSampler({n: len(p) for n, p in zip(prepared, parts)}, weights, num_samples, seed, start)
    return Mixture(prepared=prepared, weights=dict(weights), dataset=ConcatDataset(parts), sampler=sampler)
