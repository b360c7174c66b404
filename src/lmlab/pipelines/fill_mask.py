"""Fill-mask: the most likely words for a masked position.

- With a masked-LM head (BERT's MLM, Devlin et al. 2018): the softmax over the
  vocabulary at the [MASK] position; the top_k tokens, as transformers' pipeline.
- With a causal LM (the default, SmolLM2-135M-Instruct, which has no MLM head),
  by scoring candidates: the `candidates` most likely next tokens after the
  text left of the mask are the candidates (or the given `targets`); each is
  scored by the log-probability of the whole rest of the text with it in place,
  log P(candidate, right context | left context), so the words after the mask
  count too; a softmax over the candidates' scores gives their probabilities.
A text marks the gap with the tokenizer's mask token, or "<mask>" or "[MASK]".
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from lmlab.errors import LmlabError
from lmlab.hub.resolve import LoadedModel
from lmlab.pipelines.base import Pipeline, check_text, encode, pad_id
from lmlab.pipelines.classification import softmax
from lmlab.pipelines.scoring import continuation_logprobs, next_token_logprobs

MASK_MARKS = ("<mask>", "[MASK]")


class FillMaskPipeline(Pipeline):
    """Per text, the top_k `{"score", "token", "token_str", "sequence"}`, most likely first."""

    task = "fill-mask"

    def __init__(self, loaded: LoadedModel, candidates: int = 20, **kwargs: Any) -> None:
        super().__init__(loaded, **kwargs)
        c = loaded.model.config
        self.masked_lm = c.head == "mlm"
        if not self.masked_lm and not (c.head == "lm" and c.arch == "decoder"):
            raise LmlabError(f"{loaded.reference} has neither a masked-LM head nor a causal LM head to fill a mask "
                             "with; use a BERT model with its MLM head or a decoder such as smollm2-135m-instruct")
        if self.masked_lm and self.tokenizer.mask_id is None:
            raise LmlabError(f"{loaded.reference}'s tokenizer has no mask token")
        self.mask_token = self.tokenizer.special_tokens.get("mask") if self.masked_lm else None
        self.candidates = candidates

    def describe(self) -> str:
        if self.masked_lm:
            return f"{self.loaded.reference}, masked-LM head"
        return f"{self.loaded.reference}, causal LM scoring {self.candidates} candidates with the right context"

    def check(self, item: Any) -> str:
        text = check_text(item)
        marks = [m for m in {*MASK_MARKS, self.mask_token} if m]
        count = sum(text.count(m) for m in marks)
        if count != 1:
            raise LmlabError(f"fill-mask needs exactly one mask in the text ({' or '.join(sorted(marks))}), "
                             f"found {count}")
        for mark in marks:
            text = text.replace(mark, self.mask_token or "<mask>")
        return text

    def predict(self, items: list[str], top_k: int = 5, targets: Any = None, **_: Any) -> list[list[dict[str, Any]]]:
        if isinstance(targets, str):
            targets = [targets]
        if self.masked_lm:
            return self._masked(items, top_k, targets)
        return [self._causal(text, top_k, targets) for text in items]

    def _masked(self, items: list[str], top_k: int, targets: list[str] | None) -> list[list[dict[str, Any]]]:
        batch = encode(self.loaded, items)
        logits = self.model(**batch.model_inputs()).logits.float()
        mask_id, fill = self.tokenizer.mask_id, pad_id(self.loaded)
        allowed = None
        if targets:
            allowed = torch.tensor([self.tokenizer.encode(t)[0] for t in targets if self.tokenizer.encode(t)])
        results = []
        for row, encoding in enumerate(batch.encodings):
            position = encoding.ids.index(mask_id)
            probs = logits[row, position].softmax(-1)
            ids = allowed if allowed is not None else torch.arange(probs.shape[0])
            values, order = probs[ids].topk(min(top_k, len(ids)))
            out = []
            for value, token in zip(values.tolist(), ids[order].tolist()):
                tokens = [token if i == position else t for i, t in enumerate(encoding.ids) if t != fill]
                out.append({"score": value, "token": token, "token_str": self.tokenizer.decode([token]),
                            "sequence": self.tokenizer.decode(tokens, skip_special_tokens=True)})
            results.append(out)
        return results

    def _causal(self, text: str, top_k: int, targets: list[str] | None) -> list[dict[str, Any]]:
        left, right = text.split("<mask>")
        tokenizer, fill = self.tokenizer, pad_id(self.loaded)
        start = [t for t in (tokenizer.bos_id, tokenizer.eos_id) if t is not None][:1]
        prefix = start + tokenizer.encode(left.rstrip(" ")) if left.strip() else start
        space = " " if left.endswith(" ") else ""
        if targets:
            options = [(tokenizer.encode(space + t) or [fill], t) for t in targets]
        else:
            logprobs = next_token_logprobs(self.model, [prefix], fill)[0]
            special = set(tokenizer.backend.get_added_tokens_decoder())
            ranked = [i for i in logprobs.argsort(descending=True).tolist()[:self.candidates + len(special)]
                      if i not in special][:self.candidates]
            options = [([i], tokenizer.decode([i])) for i in ranked]
        rest = tokenizer.encode(right)
        scores = np.array(continuation_logprobs(self.model, [(prefix, ids + rest) for ids, _ in options], fill,
                                                self.batch_size))
        probs = softmax(scores)
        out = []
        for i in np.argsort(-probs, kind="stable")[:top_k]:
            ids, word = options[i]
            filled = left.rstrip(" ") + (word if word.startswith(" ") else space + word.lstrip(" ")) + right
            out.append({"score": float(probs[i]), "token": ids[0], "token_str": word, "sequence": filled})
        return out


__all__ = ["FillMaskPipeline"]
