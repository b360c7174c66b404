import json
import struct

import pytest
from rouge_score import rouge_scorer
from tiny import make_tiny_checkpoint

from lmlab.cli.main import main
from lmlab.errors import LmlabError
from lmlab.evaluation.harness import PromptedModel
from lmlab.generation import GenerationConfig, generate
from lmlab.hub.resolve import load_model
from lmlab.icl import IclConfig, load_records, parse_shots, parse_sweep, run_icl
from lmlab.prompting import PromptTemplate
from lmlab.resources import resource_path

DIALOGUES = resource_path("dialogues.jsonl")
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("icl") / "tiny")


@pytest.fixture(scope="module")
def chat_checkpoint(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("icl_chat") / "tiny", chat=True)


@pytest.fixture(scope="module")
def prompted(checkpoint):
    loaded = load_model(str(checkpoint))
    return PromptedModel.create(loaded.model, loaded.tokenizer)


@pytest.fixture(scope="module")
def records():
    return load_records(DIALOGUES, PromptTemplate(), ["summary"])


def config(**changes):
    values = dict(shots=(0, 1, 2), n=3, generation=GenerationConfig(max_new_tokens=6), batch_size=2)
    return IclConfig(**{**values, **changes})


@pytest.fixture(scope="module")
def report(prompted, records):
    return run_icl(prompted, records, config(), progress=False)


def test_per_example_rouge_is_rouge_score_and_rows_are_their_means(report, records):
    assert [(row.shots, row.setting, row.n) for row in report.rows] == [(0, "greedy", 3), (1, "greedy", 3),
                                                                         (2, "greedy", 3)]
    assert len(report.predictions) == 9
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    by_id = {r["id"]: r for r in records}
    for p in report.predictions:
        assert p.references == [by_id[p.id]["summary"]]
        expected = scorer.score(p.references[0], p.prediction)
        assert p.rouge == pytest.approx({name: expected[name].fmeasure for name in ROUGE_TYPES})
    for row in report.rows:
        mine = [p for p in report.predictions if p.shots == row.shots]
        for name in ROUGE_TYPES:
            assert row.rouge[name] == pytest.approx(sum(p.rouge[name] for p in mine) / 3)
        assert row.mean_words == pytest.approx(sum(len(p.prediction.split()) for p in mine) / 3)


def test_examples_come_from_the_rest_of_the_file_and_grow_one_at_a_time(report, records):
    queries = [r["id"] for r in records[:3]]
    rest = {r["id"] for r in records[3:]}
    examples = {(p.id, p.shots): p.examples for p in report.predictions}
    for query in queries:
        assert examples[query, 0] == []
        assert len(examples[query, 2]) == 2 and set(examples[query, 2]) <= rest
        assert examples[query, 1] == examples[query, 2][:1]
    assert len({tuple(examples[q, 2]) for q in queries}) > 1  # each query has its own draw


def test_prompt_token_counts_and_greedy_answers_match_generating_each_prompt_alone(chat_checkpoint, records):
    loaded = load_model(str(chat_checkpoint))
    prompted = PromptedModel.create(loaded.model, loaded.tokenizer)
    assert prompted.chat  # the tokenizer has a chat template
    report = run_icl(prompted, records, config(shots=(1,), batch_size=3), progress=False)
    template = PromptTemplate(instruction="")
    by_id = {r["id"]: r for r in records}
    for p in report.predictions:
        messages = [
            {"role": "user", "content": template.format_input(by_id[p.examples[0]]).strip()},
            {"role": "assistant", "content": by_id[p.examples[0]]["summary"]},
            {"role": "user", "content": template.format_input(by_id[p.id]).strip()},
        ]
        ids = loaded.tokenizer.encode(loaded.tokenizer.apply_chat_template(messages))
        assert p.prompt_tokens == len(ids)
        alone = generate(loaded.model, [ids], GenerationConfig(max_new_tokens=6), loaded.tokenizer)[0]
        assert p.prediction == alone.text.strip()


def test_several_reference_fields_keep_the_best_match(prompted, records):
    rows = [{**r, "topic_summary": r["topic"]} for r in records]
    report = run_icl(prompted, rows, config(shots=(0,), target_fields=("summary", "topic_summary")), progress=False)
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    for p in report.predictions:
        assert len(p.references) == 2
        best = scorer.score_multi(p.references, p.prediction)
        assert p.rouge["rouge1"] == pytest.approx(best["rouge1"].fmeasure)


def test_prompts_too_long_are_fitted_with_one_notice(tmp_path, records):
    small = make_tiny_checkpoint(tmp_path / "small", max_seq_len=600)
    loaded = load_model(str(small))
    notices = []
    report = run_icl(PromptedModel.create(loaded.model, loaded.tokenizer), records,
                     config(shots=(0, 2)), progress=False, notify=notices.append)
    assert len(notices) == 1 and report.notices == notices
    assert notices[0].startswith("3 of 6 prompts did not fit in the 600-token context window")
    assert all(p.shots_used < 2 for p in report.predictions if p.shots == 2)
    assert all(p.prompt_tokens <= 600 - 6 for p in report.predictions)


def test_sweep_makes_one_seeded_sampling_setting_per_value(prompted, records):
    sweep = config(shots=(0,), sweep=parse_sweep("temperature=0.5,2"))
    report = run_icl(prompted, records, sweep, progress=False)
    assert [s.label for s in report.settings] == ["temperature=0.5", "temperature=2"]
    assert all(s.generation.do_sample and s.generation.seed == 0 for s in report.settings)
    again = run_icl(prompted, records, sweep, progress=False)
    assert [p.prediction for p in again.predictions] == [p.prediction for p in report.predictions]


def test_parse_shots_and_sweep():
    assert parse_shots("0, 1,3,1") == (0, 1, 3)
    assert parse_sweep("top-p=0.5,0.9") == ("top_p", (0.5, 0.9))
    assert parse_sweep("top_k=1,5") == ("top_k", (1, 5))
    with pytest.raises(LmlabError, match="is not an integer"):
        parse_sweep("top_k=1.5")


def read_png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_cli_prints_the_table_and_writes_the_report(chat_checkpoint, tmp_path, capsys):
    out = tmp_path / "report"
    args = ["icl", str(chat_checkpoint), "--n", "2", "--shots", "0,1", "--max-new-tokens", "4", "--out", str(out),
            "--no-progress", "--sweep", "top_k=1,50"]
    assert main(args) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].split() == ["shots", "setting", "ROUGE-1", "ROUGE-2", "ROUGE-L", "ROUGE-Lsum", "words",
                                  "prompt", "tokens", "seconds"]
    assert [line.split()[:2] for line in printed[1:5]] == [["0", "top_k=1"], ["1", "top_k=1"], ["0", "top_k=50"],
                                                           ["1", "top_k=50"]]
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(lines) == 8
    assert set(lines[0]) == {"id", "shots", "shots_used", "examples", "setting", "prompt_tokens", "truncated",
                             "prediction", "references", "rouge"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["chat"] is True and summary["n"] == 2 and len(summary["rows"]) == 4
    assert summary["settings"][0]["stop"] == ["\n"] and summary["settings"][1]["top_k"] == 50
    assert summary["rows"][0]["rouge"]["rouge1"] == pytest.approx(
        sum(line["rouge"]["rouge1"] for line in lines[:2]) / 2)
    width, height = read_png_size(out / "rouge.png")
    assert width > 500 and height > 300
    # An earlier report is replaced by a new one.
    assert main(args[:-2] + ["--no-chat", "--stop", ""]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["chat"] is False and summary["settings"][0]["stop"] == []
    assert sorted(p.name for p in out.iterdir()) == [".lmlab.json", "predictions.jsonl", "rouge.png", "summary.json"]


def error_line(capsys):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("lmlab: error: ")
    return err.strip()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--shots", "0,-1"], "--shots takes whole numbers of examples >= 0 separated by commas, like 0,1,3; got '-1'"),
        (["--shots", "1.5"], "got '1.5'"),
        (["--sweep", "temprature=0.5"], "cannot sweep 'temprature' (did you mean: temperature?)"),
        (["--sweep", "temperature"], "--sweep takes PARAMETER=V1,V2,..."),
        (["--sweep", "top_p=0.5,1.5"], "top_p must be in (0, 1]"),
        (["--target-field", "summry"], "missing field 'summry' (did you mean: summary?)"),
        (["--n", "0"], "--n must be at least 1"),
        (["--shots", "40"], "40 shots need at least 41 records"),
    ],
)
def test_bad_options_are_one_line_errors(checkpoint, tmp_path, capsys, options, message):
    assert main(["icl", str(checkpoint), "--out", str(tmp_path / "r"), *options]) == 1
    assert message in error_line(capsys)
    assert not (tmp_path / "r").exists()


def test_bad_data_lines_are_reported_with_their_number(checkpoint, tmp_path, capsys):
    good = DIALOGUES.read_text().splitlines()
    missing = tmp_path / "missing.jsonl"
    missing.write_text("\n".join([good[0], good[1], json.dumps({"id": "x", "dialogue": "Hi."})]) + "\n")
    assert main(["icl", str(checkpoint), "--data", str(missing), "--out", str(tmp_path / "r")]) == 1
    assert error_line(capsys) == "lmlab: error: missing.jsonl line 3: missing field 'summary'"
    malformed = tmp_path / "malformed.jsonl"
    malformed.write_text("\n".join([good[0], good[1][:-1], good[2]]) + "\n")
    assert main(["icl", str(checkpoint), "--data", str(malformed), "--out", str(tmp_path / "r")]) == 1
    assert error_line(capsys).startswith("lmlab: error: malformed.jsonl line 2: not valid JSON")


def test_an_output_folder_holding_other_files_is_refused_and_left_alone(checkpoint, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    (out / "summary.json").write_text("{}")
    assert main(["icl", str(checkpoint), "--out", str(out)]) == 1
    assert "(notes.txt, summary.json) and was not written by lmlab" in error_line(capsys)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "summary.json"]
    assert (out / "summary.json").read_text() == "{}"
