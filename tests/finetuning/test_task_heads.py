"""The heads `lmlab finetune --task` trains: their data, their losses (against transformers'), and the
round trip into `lmlab run` and transformers."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

import lmlab
from lmlab.finetuning import DataFormat, FinetuneSettings, finetune, load_data
from lmlab.data.finetune_data import Collator
from lmlab.hub.checkpoint import export_hf, load_checkpoint
from lmlab.tokenizers import load_tokenizer
from lmlab.training.objectives import count_targets, loss_sum
from tests.tiny import NER_TAGS, tiny_bert

CONLL = "Anna\tB-person\nlives\tO\nin\tO\nKirkjubaejarklaustur\tB-location\n\nTom\tB-person\nMiller\tI-person\nflew\tO\n"
CONTEXT = "Anna flew from Berlin to Reykjavik with Tom Miller."
SQUAD = {"data": [{"paragraphs": [{"context": CONTEXT, "qas": [
    {"id": "1", "question": "Where did Anna fly to?", "answers": [{"text": "Reykjavik", "answer_start": 25}]},
    {"id": "2", "question": "Who flew with Anna?", "answers": [{"text": "Tom Miller", "answer_start": 40}]}]}]}]}


def _hf_loss(hf_class, folder, batch, **labels):
    model = hf_class.from_pretrained(str(folder)).eval()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        return float(model(**inputs, **labels).loss)


def test_token_classification_data_and_loss_match_transformers(tmp_path, minilm_dir):
    lm, hf = tiny_bert(tmp_path, minilm_dir, "token-classification", NER_TAGS)
    (tmp_path / "ner.conll").write_text(CONLL)
    tokenizer = load_tokenizer(lm)
    data = load_data(tmp_path / "ner.conll", DataFormat(task="token-classification"), tokenizer,
                     validation=tmp_path / "ner.conll")
    assert data.labels == ["B-location", "B-person", "I-person", "O"]
    first = data.train[0]
    pieces = [tokenizer.id_to_token(i) for i in first.tokens]  # the town splits: its tag on the first piece only
    tagged = [(p, data.labels[t]) for p, t in zip(pieces, first.tags) if t != -100]
    assert tagged == [("anna", "B-person"), ("lives", "O"), ("in", "O"), (pieces[4], "B-location")]
    assert len(pieces) > 6 and first.tags[5] == -100 and first.tags[0] == -100
    model = load_checkpoint(lm).eval()
    model.config.extra["id2label"] = {str(i): n for i, n in enumerate(data.labels)}
    batch = Collator("token-classification", 0)(data.train)
    with torch.no_grad():
        ours = float(loss_sum(model, batch)) / count_targets(batch)
    theirs = _hf_loss(transformers.AutoModelForTokenClassification, hf, batch, labels=batch["labels"])
    assert ours == pytest.approx(theirs, rel=1e-5)


def test_question_answering_spans_and_loss_match_transformers(tmp_path, minilm_dir):
    lm, hf = tiny_bert(tmp_path, minilm_dir, "question-answering")
    (tmp_path / "squad.json").write_text(json.dumps(SQUAD))
    tokenizer = load_tokenizer(lm)
    data = load_data(tmp_path / "squad.json", DataFormat(task="question-answering"), tokenizer,
                     validation=tmp_path / "squad.json")
    answers = [tokenizer.decode(e.tokens[e.span[0]:e.span[1] + 1]) for e in data.train]
    assert answers == ["reykjavik", "tom miller"]
    batch = Collator("question-answering", 0)(data.train)
    with torch.no_grad():
        ours = float(loss_sum(load_checkpoint(lm).eval(), batch)) / count_targets(batch)
    theirs = _hf_loss(transformers.AutoModelForQuestionAnswering, hf, batch,
                      start_positions=batch["labels"][:, 0], end_positions=batch["labels"][:, 1])
    assert ours == pytest.approx(theirs, rel=1e-5)


def test_pair_classification_and_label_lines(tmp_path, minilm_dir):
    tokenizer = load_tokenizer(minilm_dir)
    pairs = tmp_path / "nli.jsonl"
    pairs.write_text("".join(json.dumps({"text": a, "text_pair": b, "label": c}) + "\n" for a, b, c in [
        ("a man sleeps", "a person rests", "entailment"), ("a man sleeps", "a man runs", "contradiction")]))
    data = load_data(pairs, DataFormat(task="pair-classification"), tokenizer, validation=pairs)
    reference = transformers.AutoTokenizer.from_pretrained(str(minilm_dir))("a man sleeps", "a person rests")
    assert data.train[0].tokens == reference["input_ids"] and data.train[0].type_ids == reference["token_type_ids"]
    assert Collator("pair-classification", 0)(data.train)["token_type_ids"].shape == (2, len(reference["input_ids"]))
    lines = tmp_path / "sst.txt"
    lines.write_text("1 a fine film .\n0 a dull film .\n")
    sst = load_data(lines, DataFormat(task="classification"), tokenizer, validation=lines)
    assert sst.labels == ["0", "1"] and [e.label for e in sst.train] == [1, 0]


def test_finetuned_token_classifier_runs_in_lmlab_and_transformers(tmp_path, minilm_dir):
    lm, _ = tiny_bert(tmp_path, minilm_dir, "mlm")
    (tmp_path / "ner.conll").write_text(CONLL * 4)
    result = finetune(FinetuneSettings(model=str(lm), data=tmp_path / "ner.conll", validation=tmp_path / "ner.conll",
                                       out=tmp_path / "run", format=DataFormat(task="token-classification"),
                                       method="full", steps=2, batch_size=4, progress=False))
    text = "Anna lives in Kirkjubaejarklaustur"
    ours = lmlab.pipeline("ner", str(result.model_dir), ignore_labels=())(text)
    hf = export_hf(load_checkpoint(result.model_dir), tmp_path / "exported", load_tokenizer(result.model_dir))
    theirs = transformers.pipeline("ner", model=str(hf), ignore_labels=[])(text)
    assert [(e["entity"], e["word"], e["start"]) for e in ours] == [(e["entity"], e["word"], e["start"]) for e in theirs]
    assert {e["entity"] for e in ours} <= {"B-location", "B-person", "I-person", "O"}
