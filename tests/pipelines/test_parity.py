"""lmlab's pipelines against transformers' pipelines on the same weights: labels, spans, answers, scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers

import lmlab
from lmlab.hub.resolve import load_model

TEXTS = ["Anna flew from Berlin to Paris with Tom Miller.", "The unbelievably gloomy weather in Reykjavik"]
SCORE_TOL = 1e-4


def close(ours, theirs, keys):
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert set(a) == set(b)
        for key in keys:
            assert a[key] == b[key], (key, a, b)
        assert a["score"] == pytest.approx(float(b["score"]), abs=SCORE_TOL)


def test_text_classification_matches_transformers(nli_model):
    ours = lmlab.pipeline("text-classification", str(nli_model[0]))
    theirs = transformers.pipeline("text-classification", model=str(nli_model[1]))
    for mine, ref in zip(ours(TEXTS, top_k=None), theirs(TEXTS, top_k=None)):
        close(mine, ref, ["label"])
    single_ours, single_theirs = ours(TEXTS[0]), theirs(TEXTS[0])  # legacy shapes: [{"label", "score"}]
    assert isinstance(single_ours, list) and isinstance(single_theirs, list)
    close(single_ours, single_theirs, ["label"])
    close(ours(TEXTS), theirs(TEXTS), ["label"])
    pair = {"text": TEXTS[0], "text_pair": "Anna was in Paris."}
    close(ours(pair), [theirs(pair)], ["label"])  # a pair is not a string: transformers gives the dict alone


@pytest.mark.parametrize("strategy", ["none", "simple", "first", "average", "max"])
def test_token_classification_matches_transformers(ner_model, strategy):
    ours = lmlab.pipeline("ner", str(ner_model[0]), aggregation_strategy=strategy)
    theirs = transformers.pipeline("ner", model=str(ner_model[1]), aggregation_strategy=strategy)
    keys = ["entity", "index", "word", "start", "end"] if strategy == "none" else ["entity_group", "word", "start", "end"]
    found = 0
    for mine, ref in zip(ours(TEXTS), theirs(TEXTS)):
        close(mine, ref, keys)
        found += len(ref)
    assert found > 0  # the random head does tag entities, so there is something to compare


def test_extractive_qa_matches_transformers_span_selection(qa_model):
    """transformers 5 dropped the question-answering pipeline; its span selection lives on in
    document_question_answering.select_starts_ends, which is run here on transformers' own logits."""
    from transformers.pipelines.document_question_answering import select_starts_ends

    model = transformers.AutoModelForQuestionAnswering.from_pretrained(str(qa_model[1])).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(qa_model[1]))
    ours = lmlab.pipeline("question-answering", str(qa_model[0]))
    for question, context in [("Who flew to Paris?", TEXTS[0]), ("Where is the weather gloomy?", TEXTS[1])]:
        enc = tokenizer(question, context, return_offsets_mapping=True, return_tensors="pt")
        offsets = enc.pop("offset_mapping")[0]
        with torch.no_grad():
            out = model(**enc)
        p_mask = np.array([s != 1 for s in enc.sequence_ids(0)], dtype=int)
        p_mask[np.array(enc["input_ids"][0]) == tokenizer.cls_token_id] = 0
        starts, ends, scores, _ = select_starts_ends(out.start_logits.numpy(), out.end_logits.numpy(), p_mask,
                                                     enc["attention_mask"].numpy()[0])
        start, end = int(offsets[starts[0]][0]), int(offsets[ends[0]][1])
        mine = ours(question=question, context=context)
        assert set(mine) == {"score", "start", "end", "answer"}
        assert (mine["start"], mine["end"], mine["answer"]) == (start, end, context[start:end])
        assert mine["score"] == pytest.approx(float(scores[0]), abs=SCORE_TOL)


def test_zero_shot_nli_matches_transformers(nli_model):
    labels = ["travel", "weather", "sports"]
    ours = lmlab.pipeline("zero-shot-classification", str(nli_model[0]))
    theirs = transformers.pipeline("zero-shot-classification", model=str(nli_model[1]))
    assert ours.method == "nli"
    for multi_label in (False, True):
        for mine, ref in zip(ours(TEXTS, candidate_labels=labels, multi_label=multi_label),
                             theirs(TEXTS, candidate_labels=labels, multi_label=multi_label)):
            assert set(mine) == set(ref) and mine["sequence"] == ref["sequence"]
            assert mine["labels"] == ref["labels"]
            np.testing.assert_allclose(mine["scores"], ref["scores"], atol=SCORE_TOL)


def test_fill_mask_with_mlm_head_matches_transformers(mlm_model):
    ours = lmlab.pipeline("fill-mask", str(mlm_model[0]))
    theirs = transformers.pipeline("fill-mask", model=str(mlm_model[1]))
    text = "Anna flew from Berlin to [MASK] with Tom."
    close(ours(text, top_k=4), theirs(text, top_k=4), ["token", "token_str", "sequence"])


def test_feature_extraction_matches_transformers_and_sentence_transformers(minilm_dir):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    loaded = load_model("minilm-l6")
    tokens = lmlab.pipeline("feature-extraction", loaded)(TEXTS[0])
    reference = transformers.pipeline("feature-extraction", model=str(minilm_dir))(TEXTS[0])
    np.testing.assert_allclose(np.array(tokens), np.array(reference), atol=1e-5)
    st = sentence_transformers.SentenceTransformer(str(minilm_dir), device="cpu")
    expected = st.encode(TEXTS, convert_to_numpy=True)
    pooled = lmlab.pipeline("feature-extraction", loaded, pooling="mean")(TEXTS)
    np.testing.assert_allclose(np.array(pooled), expected, atol=1e-5)
    similarity = lmlab.pipeline("sentence-similarity", loaded)({"source_sentence": TEXTS[0], "sentences": TEXTS})
    np.testing.assert_allclose(similarity, st.similarity(expected[:1], expected)[0].numpy(), atol=1e-5)
