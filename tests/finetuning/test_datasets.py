"""Fine-tuning data: loss on the completion / assistant tokens only, prompts as lmlab prompts them at
inference, label maps, truncation, packing, splits, and one-line errors with line numbers."""

from __future__ import annotations

import pytest
import torch

from lmlab.errors import LmlabError
from lmlab.data.finetune_data import Collator, DataFormat, load_data, pack, split_indices
from lmlab.generation.chat import chat_ids
from lmlab.hub.resolve import load_model

from .conftest import colour_records, write_jsonl


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    return load_model(str(tiny_model)).tokenizer


def targets_text(tokenizer, example) -> str:
    return tokenizer.decode([t for t, keep in zip(example.tokens, example.targets) if keep], skip_special_tokens=False)


def test_plain_prompt_completion_learns_only_the_completion(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "the cat is red. colour?", "answer": "red"}])
    fmt = DataFormat(prompt_field="question", completion_field="answer", template="Q: {question}\nA: ",
                     instruction="Answer briefly.", chat=False)
    data = load_data(path, fmt, tokenizer, validation=path)
    example = data.train[0]
    prompt = tokenizer.decode(example.tokens[:example.prompt_length], skip_special_tokens=False)
    assert prompt == "Answer briefly.\n\nQ: the cat is red. colour?\nA: "
    assert targets_text(tokenizer, example) == "red<|endoftext|>"  # the tokenizer's end-of-sequence token
    assert example.targets == [False] * example.prompt_length + [True] * (len(example.tokens) - example.prompt_length)
    assert example.reference == "red"


def test_chat_prompt_is_the_one_generation_uses(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", colour_records(3))
    data = load_data(path, DataFormat(instruction="Be brief."), tokenizer, validation=path)
    example = data.train[0]
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "the cat is red. colour?"}]
    assert example.tokens[:example.prompt_length] == chat_ids(tokenizer, messages)
    assert targets_text(tokenizer, example) == "red<|im_end|>\n"


def test_collator_aligns_labels_with_logits(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", colour_records(4))
    data = load_data(path, DataFormat(), tokenizer, validation=path)
    batch = Collator("generation", pad_id=0)(data.train[:2])
    first, second = data.train[0], data.train[1]
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    for row, example in enumerate((first, second)):
        n = len(example.tokens) - 1
        labels = batch["labels"][row]
        # labels[t] is the target of logits[t]: the next token, where it belongs to the completion
        expected = [tok if keep else -100 for tok, keep in zip(example.tokens[1:], example.targets[1:])]
        assert labels[:n].tolist() == expected
        assert (labels[n:] == -100).all() and batch["attention_mask"][row, :n].all()
        assert batch["attention_mask"][row, n:].sum() == 0
        assert (labels != -100).sum() == sum(example.targets)


def test_chat_data_learns_the_assistant_turns_only(tokenizer, tmp_path):
    conversation = [{"role": "user", "content": "the dog is blue"}, {"role": "assistant", "content": "blue"},
                    {"role": "user", "content": "and the cat?"}, {"role": "assistant", "content": "red"}]
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": conversation}])
    example = load_data(path, DataFormat(), tokenizer, validation=path).train[0]
    assert targets_text(tokenizer, example) == "blue<|im_end|>\nred<|im_end|>\n"
    assert tokenizer.decode(example.tokens, skip_special_tokens=False) == tokenizer.apply_chat_template(
        conversation, add_generation_prompt=False)
    assert example.tokens[:example.prompt_length] == chat_ids(tokenizer, conversation[:3])
    assert example.reference == "red"


def test_long_prompts_are_cut_and_completions_kept(tokenizer, tmp_path):
    long = {"prompt": "the cat is red. " * 40, "completion": "red"}
    path = write_jsonl(tmp_path / "d.jsonl", [long, *colour_records(2)])
    data = load_data(path, DataFormat(max_length=40, chat=False), tokenizer, validation=path)
    assert data.truncated == 1
    assert all(len(e.tokens) <= 40 for e in data.train)
    assert targets_text(tokenizer, data.train[0]) == "red<|endoftext|>"
    assert tokenizer.decode(data.train[0].tokens[:data.train[0].prompt_length]).endswith("...")


def test_long_completions_are_cut_after_the_prompt(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "the cat is red. colour?", "completion": "red " * 60}])
    example = load_data(path, DataFormat(max_length=40, chat=False), tokenizer, validation=path).train[0]
    assert len(example.tokens) == 40 and sum(example.targets) > 20
    assert tokenizer.decode(example.tokens[:example.prompt_length]) == "the cat is red. colour?"


def test_classification_labels_and_truncation(tokenizer, tmp_path):
    (tmp_path / "train.csv").write_text("text,label\nthe cat is red,2\nthe dog is blue,10\nthe bird,2\n",
                                        encoding="utf-8")
    data = load_data(tmp_path / "train.csv", DataFormat(task="classification", max_length=8), tokenizer,
                     validation=tmp_path / "train.csv")
    assert data.labels == ["2", "10"]  # numeric labels in numeric order
    assert [e.label for e in data.train] == [0, 1, 0]
    assert data.id2label() == {"0": "2", "1": "10"}
    batch = Collator("classification", pad_id=0)(data.train)
    assert batch["labels"].tolist() == [0, 1, 0]


def test_packing_keeps_every_token_and_target(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", colour_records(20))
    plain = load_data(path, DataFormat(max_length=64), tokenizer, validation=path)
    packed = load_data(path, DataFormat(max_length=64), tokenizer, validation=path, packing=True)
    assert packed.packed_rows == len(packed.train) < len(plain.train)
    assert all(len(row.tokens) <= 64 for row in packed.train)
    assert sum(len(r.tokens) for r in packed.train) == sum(len(e.tokens) for e in plain.train)
    assert sum(sum(r.targets) for r in packed.train) == sum(sum(e.targets) for e in plain.train)
    assert pack(plain.train[:2], 1000)[0].tokens == plain.train[0].tokens + plain.train[1].tokens


def test_split_is_seeded_and_disjoint():
    train, val = split_indices(50, 0.2, seed=3)
    assert len(val) == 10 and sorted(train + val) == list(range(50))
    assert (train, val) == split_indices(50, 0.2, seed=3)
    assert val != split_indices(50, 0.2, seed=4)[1]


def test_missing_field_names_the_line(tokenizer, tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "a", "completion": "b"}\n\n{"prompt": "c"}\n', encoding="utf-8")
    with pytest.raises(LmlabError, match=r"d.jsonl line 3: missing field 'completion'"):
        load_data(path, DataFormat(), tokenizer)


def test_empty_value_names_the_line(tokenizer, tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('text,label\n"two\nlines",pos\nfine,\n', encoding="utf-8")
    with pytest.raises(LmlabError, match=r"d.csv line 4: field 'label' must be a label name"):
        load_data(path, DataFormat(task="classification"), tokenizer, validation=path)


def test_unseen_validation_label(tokenizer, tmp_path):
    (tmp_path / "train.csv").write_text("text,label\ngood,positive\nbad,negative\n", encoding="utf-8")
    (tmp_path / "val.csv").write_text("text,label\nfine,positive\nmeh,neutral\n", encoding="utf-8")
    with pytest.raises(LmlabError, match=r"val.csv line 3: label 'neutral' does not occur in the training data "
                                         r"\(its labels: negative, positive\)"):
        load_data(tmp_path / "train.csv", DataFormat(task="classification"), tokenizer, validation=tmp_path / "val.csv")


def test_empty_training_sets(tokenizer, tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n", encoding="utf-8")
    with pytest.raises(LmlabError, match="no records"):
        load_data(tmp_path / "empty.jsonl", DataFormat(), tokenizer)
    path = write_jsonl(tmp_path / "two.jsonl", colour_records(2))
    with pytest.raises(LmlabError, match="the training set is empty"):
        load_data(path, DataFormat(), tokenizer, validation_fraction=0.9)


def test_bad_messages(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"messages": [{"role": "user", "content": "hi"},
                                                            {"role": "assistant", "content": "yo"}]},
                                              {"messages": [{"role": "user", "content": "no answer"}]}])
    with pytest.raises(LmlabError, match=r"c.jsonl line 2: the conversation has no assistant turn"):
        load_data(path, DataFormat(), tokenizer, validation=path)
    path = write_jsonl(tmp_path / "r.jsonl", [{"messages": [{"role": "robot", "content": "hi"}]}])
    with pytest.raises(LmlabError, match=r"r.jsonl line 1: message 1 has role 'robot'"):
        load_data(path, DataFormat(), tokenizer, validation=path)


def test_collated_batch_is_long_tensors(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", colour_records(2))
    batch = Collator("generation", 0)(load_data(path, DataFormat(), tokenizer, validation=path).train)
    assert all(v.dtype == torch.long for v in batch.values())
