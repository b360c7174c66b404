"""Every task name answers with transformers' keys; bad input ends in one clear line."""

from __future__ import annotations

import json

import pytest
import transformers

import lmlab
from lmlab.cli.main import main
from lmlab.errors import LmlabError
from lmlab.hub.checkpoint import export_hf, load_checkpoint
from lmlab.hub.resolve import load_model
from lmlab.pipelines.registry import TASKS
from lmlab.tokenizers import load_tokenizer
from tests.finetuning.test_cli import error_line
from tests.tiny import make_tiny_checkpoint

FIFTEEN = {"sentiment-analysis", "text-classification", "zero-shot-classification", "text-generation",
           "text2text-generation", "translation", "summarization", "question-answering", "fill-mask", "ner",
           "conversational", "sentence-similarity", "token-classification", "feature-extraction",
           "table-question-answering"}
# Keys of the pipelines transformers 5 no longer ships, as transformers 4's documentation gives them.
V4_KEYS = {"summarization": {"summary_text"}, "translation": {"translation_text"},
           "text2text-generation": {"generated_text"}, "question-answering": {"score", "start", "end", "answer"},
           "table-question-answering": {"answer", "coordinates", "cells", "aggregator"}}


@pytest.fixture(scope="module")
def tiny_chat(tmp_path_factory):
    folder = make_tiny_checkpoint(tmp_path_factory.mktemp("chat") / "model", max_seq_len=256, chat=True)
    return load_model(str(folder)), folder


def test_the_registry_holds_the_fifteen_names():
    assert set(TASKS) == FIFTEEN


def test_text_generation_is_transformers_greedy_output(tiny_chat, tmp_path):
    loaded, folder = tiny_chat
    hf = export_hf(load_checkpoint(folder), tmp_path / "hf", load_tokenizer(folder))
    prompt = "Tom: hello there"
    ours = lmlab.pipeline("text-generation", loaded)(prompt, max_new_tokens=6)
    theirs = transformers.pipeline("text-generation", model=str(hf))(prompt, max_new_tokens=6, do_sample=False)
    assert ours == theirs
    chat = [{"role": "user", "content": "hello"}]
    mine = lmlab.pipeline("text-generation", loaded)(chat, max_new_tokens=4)
    assert set(mine[0]) == {"generated_text"} and mine[0]["generated_text"][:1] == chat
    assert mine[0]["generated_text"][-1]["role"] == "assistant"


@pytest.mark.parametrize("task,inputs", [
    ("summarization", "Tom: hello. Ann: hi."),
    ("translation", "hello there"),
    ("text2text-generation", "say hello"),
    ("question-answering", {"question": "who said hello?", "context": "Tom said hello."}),
    ("table-question-answering", {"table": {"name": ["Tom", "Ann"], "age": ["3", "4"]}, "query": "how old is Ann?"}),
])
def test_generation_type_tasks_answer_with_transformers_keys(tiny_chat, task, inputs):
    out = lmlab.pipeline(task, tiny_chat[0], max_new_tokens=4)(inputs)
    result = out if isinstance(out, dict) else out[0]
    assert set(result) == V4_KEYS[task]


def test_conversational_appends_the_reply(tiny_chat):
    out = lmlab.pipeline("conversational", tiny_chat[0], max_new_tokens=4)("hello")
    messages = out[0]["generated_text"]
    assert [m["role"] for m in messages] == ["user", "assistant"]


def test_zero_shot_by_likelihood_keys_and_order(tiny_chat):
    out = lmlab.pipeline("zero-shot-classification", tiny_chat[0])(["a dog", "a cat"], candidate_labels="red,blue")
    assert [set(o) for o in out] == [{"sequence", "labels", "scores"}] * 2
    for o in out:
        assert sorted(o["labels"]) == ["blue", "red"] and o["scores"] == sorted(o["scores"], reverse=True)
        assert sum(o["scores"]) == pytest.approx(1.0)


def test_fill_mask_by_a_causal_lm_ranks_candidates(tiny_chat):
    out = lmlab.pipeline("fill-mask", tiny_chat[0])("Tom said <mask> to Ann.", top_k=3)
    assert len(out) == 3 and all(set(o) == {"score", "token", "token_str", "sequence"} for o in out)
    assert [o["score"] for o in out] == sorted((o["score"] for o in out), reverse=True)
    assert all(o["sequence"].startswith("Tom said") and o["sequence"].endswith("to Ann.") for o in out)


def test_unknown_task_lists_close_names(capsys):
    assert main(["run", "sentimnt-analysis", "--text", "hi"]) == 1
    line = error_line(capsys)
    assert "did you mean: sentiment-analysis" in line and "table-question-answering" in line


def test_model_without_the_head_names_the_finetune_command(capsys, minilm_dir):
    assert main(["run", "ner", "minilm-l6", "--text", "Anna lives in Berlin"]) == 1
    assert "lmlab finetune minilm-l6 --task token-classification" in error_line(capsys)


def test_empty_input(capsys, minilm_dir):
    assert main(["run", "feature-extraction", "--text", "  "]) == 1
    assert "empty" in error_line(capsys)


@pytest.mark.parametrize("args,message", [
    (["question-answering", "--text", "who?"], "needs a context"),
    (["zero-shot-classification", "--text", "a dog"], "needs candidate labels"),
])
def test_missing_companion_inputs(capsys, tiny_chat, args, message):
    assert main(["run", args[0], str(tiny_chat[1]), *args[1:]]) == 1
    assert message in error_line(capsys)


def test_table_that_is_not_rectangular(capsys, tiny_chat, tmp_path):
    table = tmp_path / "t.csv"
    table.write_text("name,age\nTom,3\nAnn\n")
    assert main(["run", "table-question-answering", str(tiny_chat[1]), "--text", "age of Ann?", "--table",
                 str(table)]) == 1
    assert "not rectangular" in error_line(capsys)
    with pytest.raises(LmlabError, match="not rectangular"):
        lmlab.pipeline("table-question-answering", tiny_chat[0])(table={"a": ["1", "2"], "b": ["3"]}, query="a?")


def test_run_writes_jsonl_in_input_order(tiny_chat, tmp_path, minilm_dir):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"source_sentence": s, "sentences": ["a cat", "a dog"]}) + "\n"
                            for s in ("a cat", "a dog")))
    out = tmp_path / "out" / "sim.jsonl"
    assert main(["run", "sentence-similarity", "--data", str(data), "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0][0] == pytest.approx(1.0, abs=1e-5) and rows[1][1] == pytest.approx(1.0, abs=1e-5)


def test_generative_answer_is_the_first_written_line():
    from lmlab.pipelines.question_answering import first_line, qa_prompt

    assert first_line("\n Gustave Eiffel.\nThe tower was designed by him.") == "Gustave Eiffel"
    assert first_line("") == ""
    turns = qa_prompt("Who?", "Tom said hello.", chat=True, shots=1)
    assert [t["role"] for t in turns] == ["user", "assistant", "user"] and "Tom said hello." in turns[-1]["content"]
    plain = qa_prompt("Who?", "Tom said hello.", chat=False, shots=1)
    assert plain.endswith("Context: Tom said hello.\n\nQuestion: Who?\nAnswer:")
    assert [t["role"] for t in qa_prompt("Who?", "Tom said hello.", chat=True)] == ["user", "assistant"] * 3 + ["user"]


def test_generative_qa_extracts_a_span_by_default(tiny_chat):
    context = "Tom said hello to Ann in the garden."
    qa = lmlab.pipeline("question-answering", tiny_chat[0], max_new_tokens=4)
    assert "constrained to spans" in qa.describe()
    out = qa(question="who said hello?", context=context)
    assert out["answer"] and out["answer"] == context[out["start"]:out["end"]]
    assert 0 < out["score"] <= 1


def test_trim_answer_cuts_question_and_stop_words_at_the_ends_only():
    from lmlab.pipelines.question_answering import trim_answer

    question = "Which party is strongest in Victoria's regions?"
    assert trim_answer("The Nationals are strongest in", question) == "Nationals"
    assert trim_answer("the party of the Nationals, in Victoria", question) == "Nationals,"
    assert trim_answer("Greens strongest in Melbourne", question) == "Greens strongest in Melbourne"
    assert trim_answer("the", question) == "the" and trim_answer("", question) == ""


def test_generative_qa_reads_the_selected_sentence(tiny_chat, minilm_dir):
    from lmlab.pipelines.sentence_selection import select_sentences

    context = "Tom said hello to Ann in the garden. The weather in Paris was cold and wet in May."
    question = "what was the weather like in Paris?"
    selector = load_model(str(minilm_dir))
    (start, end), = select_sentences(selector, question, context, 1)
    qa = lmlab.pipeline("question-answering", tiny_chat[0], max_new_tokens=4, selector=selector)
    assert "sentence selection" in qa.describe()
    out = qa(question=question, context=context)
    assert start <= out["start"] < out["end"] <= end and out["answer"] == context[out["start"]:out["end"]]


def test_a_prefix_longer_than_the_window_is_scored_on_its_last_tokens(tiny_chat):
    import torch
    import torch.nn.functional as F

    from lmlab.pipelines.scoring import continuation_logprobs

    model = tiny_chat[0].model
    window = model.config.max_seq_len
    prefix, continuation = [5 + i % 50 for i in range(window + 20)], [7, 8, 9]
    with torch.no_grad():  # by hand: the last window - 3 prefix tokens, then the continuation, in one pass
        logprobs = F.log_softmax(model(torch.tensor([prefix[-(window - 3):] + continuation])).logits.float()[0], -1)
    expected = sum(float(logprobs[window - 4 + i, token]) for i, token in enumerate(continuation))
    assert continuation_logprobs(model, [(prefix, continuation)], 0)[0] == pytest.approx(expected, abs=1e-4)
