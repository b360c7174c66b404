"""Task heads: what turns the final hidden states into an answer.

- lm: a projection to the vocabulary (next token for decoders, output token for
  encoder-decoders), usually tied to the token embedding (Press & Wolf 2017).
- mlm: BERT's masked-LM head: dense + activation + LayerNorm, then the tied
  vocabulary projection with its own bias (Devlin et al. 2018).
- sequence-classification: encoders pool the first ([CLS]) token through
  dense + tanh (BERT's pooler); decoders read the last real token (GPT-style).
- token-classification: a label per token (NER, POS).
- question-answering: a start and an end logit per token, for extractive spans
  (BERT on SQuAD).

A task head put on a pre-trained model (`attach_head`, Devlin et al. 2018, section
4.1; Radford et al. 2018 for decoders) replaces its language-modelling head: new
weights drawn from N(0, 0.02) with zero biases, as BERT initializes them; the label
names travel in the config (`extra["id2label"]`) so predictions read back as names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from lmlab.config import ModelConfig
from lmlab.errors import LmlabError
from lmlab.models.feedforward import activation_fn

if TYPE_CHECKING:
    from lmlab.models.transformer import Transformer

HEAD_INIT_STD = 0.02
TASK_HEADS = ("sequence-classification", "token-classification", "question-answering")  # put on by attach_head


class LMHead(nn.Module):
    def __init__(self, config: ModelConfig, embedding: nn.Embedding) -> None:
        super().__init__()
        self.proj = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.proj.weight = embedding.weight
        self.scale = config.d_model**-0.5 if config.rescale_tied_output else 1.0

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.scale != 1.0:
            hidden = hidden * self.scale
        return self.proj(hidden)


class MaskedLMHead(nn.Module):
    def __init__(self, config: ModelConfig, embedding: nn.Embedding) -> None:
        super().__init__()
        self.dense = nn.Linear(config.d_model, config.d_model)
        self.act = activation_fn(config.activation)
        self.norm = nn.LayerNorm(config.d_model, eps=config.norm_eps)
        self.proj = nn.Linear(config.d_model, config.vocab_size, bias=True)
        if config.tie_embeddings:
            self.proj.weight = embedding.weight

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.proj(self.norm(self.act(self.dense(hidden))))


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token in each row, for left or right padding."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (positions * attention_mask.long()).argmax(-1)


class SequenceClassificationHead(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.pool_first = config.arch == "encoder"
        self.dropout = nn.Dropout(config.dropout)
        if self.pool_first:
            self.pooler = nn.Linear(config.d_model, config.d_model)
            self.classifier = nn.Linear(config.d_model, config.num_labels)
        else:
            self.classifier = nn.Linear(config.d_model, config.num_labels, bias=False)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of shape [B, num_labels]."""
        if self.pool_first:
            pooled = torch.tanh(self.pooler(hidden[:, 0]))
            return self.classifier(self.dropout(pooled))
        if attention_mask is None:
            last = hidden[:, -1]
        else:
            last = hidden[torch.arange(hidden.shape[0], device=hidden.device), last_token_index(attention_mask)]
        return self.classifier(last)


class TokenClassificationHead(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(config.d_model, config.num_labels)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.classifier(self.dropout(hidden))


class QuestionAnsweringHead(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.span = nn.Linear(config.d_model, 2)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, T, 2]: [..., 0] scores each token as the answer's start, [..., 1] as its end."""
        return self.span(hidden)


PER_POSITION_HEADS = ("lm", "mlm", "token-classification")  # heads that map each position on its own


def make_head(config: ModelConfig, embedding: nn.Embedding) -> nn.Module | None:
    if config.head == "lm":
        return LMHead(config, embedding)
    if config.head == "mlm":
        return MaskedLMHead(config, embedding)
    if config.head == "sequence-classification":
        return SequenceClassificationHead(config)
    if config.head == "token-classification":
        return TokenClassificationHead(config)
    if config.head == "question-answering":
        return QuestionAnsweringHead(config)
    return None


def attach_head(model: Transformer, head: str, labels: list[str] | None = None, seed: int = 0) -> Transformer:
    """Give `model` a freshly initialized task head: sequence-classification or token-classification for
    `labels` (id = position), or question-answering (a start and an end logit per token)."""
    c = model.config
    if c.arch == "encoder-decoder":
        raise LmlabError(f"a {head} head needs an encoder (BERT-like) or a decoder (GPT-like) model; an "
                         "encoder-decoder writes its answers as text: fine-tune it for generation")
    labels = labels or []
    extra = {**c.extra, "id2label": {str(i): name for i, name in enumerate(labels)}} if labels else c.extra
    config = c.replace(head=head, num_labels=len(labels) or 2, extra=extra)
    new = make_head(config, model.tok_emb)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in new.named_parameters():
            if name.endswith("bias"):
                param.zero_()
            else:
                param.copy_(torch.randn(param.shape, generator=generator) * HEAD_INIT_STD)
    model.head = new.to(device=model.tok_emb.weight.device, dtype=model.tok_emb.weight.dtype)
    model.config = config
    return model
