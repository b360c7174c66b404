"""Tokenizers: text to token ids and back, the first and last step of every language model.

- Byte-level BPE (Sennrich et al. 2016, "Neural Machine Translation of Rare Words with Subword
  Units", arXiv:1508.07909, applied to the 256 byte values by GPT-2, Radford et al. 2019): start
  from single bytes and repeatedly merge the most frequent adjacent pair into a new token.
  `train_bpe` learns the merges with the Hugging Face `tokenizers` trainer.
- Whatever a Hugging Face folder describes in `tokenizer.json` (WordPiece for BERT, Unigram for T5,
  BPE for GPT-2 and Llama), and what a GGUF file describes in llama.cpp's `tokenizer.ggml.*`
  metadata: `load_tokenizer`, `tokenizer_from_gguf`.
- One token per character (`CharTokenizer`), as nanoGPT's `shakespeare_char` run does.

Every tokenizer implements `TokenizerProtocol` (base.py), which the rest of lmlab is typed against. The
modules: base.py (the protocol, roles, file names), huggingface.py (`Tokenizer`), char.py, chat_template.py,
training.py (`train_bpe`), loading.py (`load_tokenizer`, `save_tokenizer_folder`), from_gguf.py, views.py.

Chat templates are Jinja2 programs that instruction-tuned models ship to turn a list of messages
into the one string they were trained on. They come from model files, so they run in Jinja2's
sandbox, with the same settings and helpers transformers' `apply_chat_template` gives them.
"""

from lmlab.tokenizers.base import (CHAR_TOKENIZER_FILE, HF_CONFIG_FILE, LMLAB_TOKENIZER_FILE, ROLES, TOKENIZER_FILE,
                                   TOKENIZER_KIND, TokenizerProtocol)
from lmlab.tokenizers.char import CharTokenizer
from lmlab.tokenizers.chat_template import render_chat_template
from lmlab.tokenizers.from_gguf import GGUF_PRE_SPLITS, GGUF_ROLE_KEYS, tokenizer_from_gguf
from lmlab.tokenizers.huggingface import DEFAULT_SPECIAL_TOKENS, SPECIAL_TOKEN_ROLES, Tokenizer
from lmlab.tokenizers.loading import load_tokenizer, save_tokenizer_folder
from lmlab.tokenizers.training import train_bpe
from lmlab.tokenizers.views import TokenPiece, describe, explain

__all__ = ["CHAR_TOKENIZER_FILE", "DEFAULT_SPECIAL_TOKENS", "GGUF_PRE_SPLITS", "GGUF_ROLE_KEYS", "HF_CONFIG_FILE",
           "LMLAB_TOKENIZER_FILE", "ROLES", "SPECIAL_TOKEN_ROLES", "TOKENIZER_FILE", "TOKENIZER_KIND", "CharTokenizer",
           "TokenPiece", "Tokenizer", "TokenizerProtocol", "describe", "explain", "load_tokenizer",
           "render_chat_template", "save_tokenizer_folder", "tokenizer_from_gguf", "train_bpe"]
