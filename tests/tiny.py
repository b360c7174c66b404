"""The tests' tiny models, in one place.

- `hf_config` / `hf_pair`: a random transformers model of each family (Llama, GPT-2, BERT, T5, Flan-T5) and
  the lmlab model holding the same weights, for the parity tests (each test names the sizes it changes).
- `tiny_decoder`: the small Llama-style lmlab config the generation and fine-tuning fixtures train a BPE for.
- `tiny_tokenizer` / `make_tiny_checkpoint`: a tiny random Llama-style checkpoint with a real BPE tokenizer,
  for fast end-to-end tests of commands that take a model (its answers are gibberish, but every step of the
  pipeline runs for real).
- `tiny_bert`: tiny BERTs with MiniLM's real WordPiece tokenizer, saved as lmlab checkpoints and exported to
  Hugging Face folders, so lmlab and transformers run the same weights on the same tokens.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import transformers

from lmlab.config import ModelConfig, get_preset
from lmlab.hub.checkpoint import export_hf, save_checkpoint
from lmlab.hub.convert import config_from_hf, family_of, state_dict_from_hf
from lmlab.models import Transformer
from lmlab.models.heads import attach_head
from lmlab.resources import resource_path
from lmlab.tokenizers import Tokenizer, load_tokenizer, train_bpe

# A ChatML template, the format of SmolLM2-Instruct's.
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
CHAT_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
NER_TAGS = ["B-location", "B-person", "I-location", "I-person", "O"]
NLI_LABELS = ["contradiction", "entailment", "neutral"]

HF_CONFIGS = {  # two layers, d_model 64, four heads: the sizes every family shares
    "llama": (transformers.LlamaConfig, dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                             tie_word_embeddings=False)),
    "gpt2": (transformers.GPT2Config, dict(n_embd=64, n_layer=2, n_head=4, n_positions=64)),
    "bert": (transformers.BertConfig, dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                           intermediate_size=96, max_position_embeddings=64)),
    "t5": (transformers.T5Config, dict(d_model=64, d_kv=16, d_ff=96, num_layers=2, num_heads=4,
                                       relative_attention_num_buckets=8, relative_attention_max_distance=20)),
    "flan-t5": (transformers.T5Config, dict(d_model=64, d_kv=16, d_ff=96, num_layers=2, num_heads=4,
                                            feed_forward_proj="gated-gelu", tie_word_embeddings=False)),
}
HF_CLASSES = {"llama": transformers.LlamaForCausalLM, "gpt2": transformers.GPT2LMHeadModel,
              "bert": transformers.BertForMaskedLM, "t5": transformers.T5ForConditionalGeneration,
              "flan-t5": transformers.T5ForConditionalGeneration}


def hf_config(family: str, vocab_size: int = 120, **changes) -> transformers.PretrainedConfig:
    """The tiny transformers config of `family`, with `changes` (its own argument names) to the shared sizes."""
    cls, sizes = HF_CONFIGS[family]
    return cls(**{**sizes, "vocab_size": vocab_size, **changes})


def hf_pair(family: str, config: transformers.PretrainedConfig | None = None, weight_std: float | None = None,
            head: str | None = None, **lmlab_changes) -> tuple[transformers.PreTrainedModel, Transformer]:
    """A random transformers model (seed 0; matrices drawn from N(0, weight_std) when given) and the lmlab model
    holding the same weights (its config converted, then `lmlab_changes` applied)."""
    torch.manual_seed(0)
    hf_model = HF_CLASSES[family](config or hf_config(family)).eval()
    if weight_std is not None:
        with torch.no_grad():
            for param in hf_model.parameters():
                if param.dim() > 1:
                    param.normal_(0, weight_std)
    hf_dict = hf_model.config.to_dict()
    ours_config = config_from_hf(hf_dict, head=head)
    for name, value in lmlab_changes.items():
        setattr(ours_config, name, value)
    ours = Transformer(ours_config).eval()
    ours.load_state_dict(state_dict_from_hf(hf_model.state_dict(), ours_config, family_of(hf_dict)), strict=False)
    return hf_model, ours


def tiny_decoder(vocab_size: int, max_seq_len: int, eos_token_id: int | None) -> ModelConfig:
    """A 2-layer Llama-style decoder (d_model 32, 4 query and 2 key/value heads, SwiGLU, RMSNorm, rotary)."""
    return ModelConfig(arch="decoder", vocab_size=vocab_size, d_model=32, n_layer=2, n_head=4, n_kv_head=2, d_ff=64,
                       max_seq_len=max_seq_len, pos_encoding="rotary", norm="rmsnorm", activation="swiglu", bias=False,
                       eos_token_id=eos_token_id)


def tiny_tokenizer(folder: Path, chat: bool = False) -> Tokenizer:
    """A 400-token byte-level BPE trained on the shipped dialogues (its corpus is written beside `folder`)."""
    text = folder.parent / f"{folder.name}_corpus.txt"
    records = [json.loads(line) for line in resource_path("dialogues.jsonl").read_text().splitlines()]
    text.write_text("\n".join(r["dialogue"] + "\n" + r["summary"] for r in records), encoding="utf-8")
    tokenizer = train_bpe([text], 400, CHAT_SPECIAL_TOKENS, show_progress=False)
    if chat:
        tokenizer.chat_template = CHATML
    return tokenizer


def make_tiny_checkpoint(folder: Path, max_seq_len: int = 2048, chat: bool = False) -> Path:
    """Save a tiny-llama (random weights, seed 0) with a 400-token BPE trained on the shipped dialogues."""
    tokenizer = tiny_tokenizer(folder, chat)
    model = Transformer(get_preset("tiny-llama").replace(max_seq_len=max_seq_len)).init_weights(seed=0).eval()
    return save_checkpoint(model, folder, tokenizer)


def tiny_bert(folder: Path, minilm_dir: Path, head: str, labels: list[str] | None = None,
              seed: int = 0) -> tuple[Path, Path]:
    """(lmlab checkpoint, exported HF folder) of a random 2-layer BERT over MiniLM's vocabulary."""
    config = get_preset("tiny-bert").replace(vocab_size=30522, max_seq_len=512, head="mlm" if head == "mlm" else "none")
    model = Transformer(config).init_weights(std=0.5, seed=seed)
    if head != "mlm":
        attach_head(model, head, labels, seed=seed)
        with torch.no_grad():  # larger head weights, so the scores spread and the answers differ
            for p in model.head.parameters():
                p.normal_(0, 1.0, generator=torch.Generator().manual_seed(seed))
    model.eval()
    tokenizer = load_tokenizer(minilm_dir)
    return (save_checkpoint(model, folder / "lmlab", tokenizer), export_hf(model, folder / "hf", tokenizer))
