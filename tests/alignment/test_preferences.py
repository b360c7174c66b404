"""Preference pairs: the shared prompt found, only the answers scored, bad pairs refused in one line."""

from __future__ import annotations

import pytest

from lmlab.alignment.preferences import PairCollator, load_preferences, split_conversations
from lmlab.errors import LmlabError
from lmlab.data.finetune_data import DataFormat
from lmlab.tokenizers import load_tokenizer
from tests.alignment.conftest import colour_pairs, hh, write_jsonl


def test_hh_conversations_part_at_the_answer_and_use_the_chat_template(tmp_path, tiny_model):
    tokenizer = load_tokenizer(tiny_model)
    record = {"chosen": hh("the cat is red. colour?", "red", "and the dog?", "blue"),
              "rejected": hh("the cat is red. colour?", "red", "and the dog?", "I will not say")}
    data = load_preferences(write_jsonl(tmp_path / "p.jsonl", [record]), DataFormat(task="dpo"), tokenizer,
                            validation=tmp_path / "p.jsonl")
    pair = data.train[0]
    messages = [{"role": "user", "content": "the cat is red. colour?"}, {"role": "assistant", "content": "red"},
                {"role": "user", "content": "and the dog?"}]
    assert tokenizer.decode(pair.prompt, False) == ("<|im_start|>user\nthe cat is red. colour?<|im_end|>\n<|im_start|>"
                                             "assistant\nred<|im_end|>\n<|im_start|>user\nand the dog?<|im_end|>\n"
                                             "<|im_start|>assistant\n")
    assert pair.prompt_text == messages
    assert tokenizer.decode(pair.chosen, False) == "blue<|im_end|>\n"
    assert tokenizer.decode(pair.rejected, False) == "I will not say<|im_end|>\n"


def test_prompt_field_plain_text_and_only_the_answers_are_labelled(tmp_path, tiny_model):
    tokenizer = load_tokenizer(tiny_model)
    path = write_jsonl(tmp_path / "p.jsonl", colour_pairs(2))
    data = load_preferences(path, DataFormat(task="dpo", chat=False), tokenizer, validation=path, eos_id=7)
    pair = data.train[0]
    assert pair.prompt == tokenizer.encode("the cat is red. colour?", add_special_tokens=True)
    assert pair.chosen == tokenizer.encode("red") + [7] and pair.rejected == tokenizer.encode("green") + [7]
    batch = PairCollator(pad_id=0)(data.train)
    n = len(pair.prompt)
    assert batch["input_ids"].shape[0] == 4  # chosen rows, then rejected rows
    assert batch["input_ids"][0, :n + len(pair.chosen) - 1].tolist() == (pair.prompt + pair.chosen)[:-1]
    assert batch["labels"][0, :n - 1].eq(-100).all()
    assert batch["labels"][0, n - 1:n - 1 + len(pair.chosen)].tolist() == pair.chosen
    assert batch["labels"][2, n - 1:n - 1 + len(pair.rejected)].tolist() == pair.rejected
    assert int((batch["labels"][0] != -100).sum()) == len(pair.chosen)
    whole = PairCollator(pad_id=0, scored="last")(data.train)
    assert whole["input_ids"][0, :n + len(pair.chosen)].tolist() == pair.prompt + pair.chosen
    assert "labels" not in whole


@pytest.mark.parametrize("record, message", [
    ({"chosen": hh("hi", "hello"), "rejected": hh("hi", "hello")}, "line 1: 'chosen' and 'rejected' are the same"),
    ({"chosen": hh("hi", "hello"), "rejected": hh("bye", "hello")}, "line 1: 'chosen' and 'rejected' do not share"),
    ({"prompt": "hi", "chosen": "same", "rejected": "same"}, "line 1: 'chosen' and 'rejected' are the same answer"),
    ({"chosen": "a good answer", "rejected": "a bad answer"}, "no shared prompt; give a 'prompt' field"),
])
def test_bad_pairs_are_one_clear_line(tmp_path, tiny_model, record, message):
    path = write_jsonl(tmp_path / "p.jsonl", [record])
    with pytest.raises(LmlabError, match=message) as err:
        load_preferences(path, DataFormat(task="reward"), load_tokenizer(tiny_model), validation=path)
    assert "\n" not in str(err.value) and str(err.value).startswith("p.jsonl line 1")


def test_conversations_may_differ_after_the_first_parting_answer():
    prompt, chosen, rejected = split_conversations(hh("q", "a", "q2", "yes", "q3", "fine"), hh("q", "a", "q2", "no"),
                                                   "here")
    assert [m["content"] for m in prompt] == ["q", "a", "q2"]
    assert [m["content"] for m in chosen] == ["yes", "q3", "fine"] and [m["content"] for m in rejected] == ["no"]
