import json
import math
import re

import pytest
import sacrebleu
import torch
import torch.nn.functional as F
from rouge_score import rouge_scorer
from tiny import make_tiny_checkpoint

from lmlab.cli.main import main
from lmlab.errors import LmlabError
from lmlab.evaluation.harness import PromptedModel, evaluate_records, label_key, score
from lmlab.generation import GenerationConfig, generate
from lmlab.hub.resolve import load_model
from lmlab.prompting import PromptTemplate

sklearn_metrics = pytest.importorskip("sklearn.metrics")

RECORDS = [
    {"prompt": "Translate to French: the cat", "completion": "le chat", "prediction": "le chat", "label": "Yes"},
    {"prompt": "Translate to French: the dog", "completion": "le chien", "prediction": "un chien", "label": "no"},
    {"prompt": "Translate to French: a house", "completion": "une maison", "prediction": "la maison", "label": "no"},
]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("harness") / "tiny")


def test_labels_are_compared_without_case_spaces_final_period_or_later_lines():
    assert label_key(" Positive.\nBecause the review praises the food.") == "positive"
    assert label_key(1) == label_key("1 ") == "1"
    assert label_key("\n\nno") == "no"
    assert label_key("") == ""


def test_label_scores_match_scikit_learn():
    predictions = ["yes", "No.", " maybe", "yes", "no", "Maybe"]
    labels = ["yes", "no", "no", "maybe", "no", "maybe"]
    keys_p, keys_l = [label_key(p) for p in predictions], [label_key(label) for label in labels]
    scores = score(["accuracy", "f1"], predictions, labels, average="macro").values
    assert scores["accuracy"] == pytest.approx(sklearn_metrics.accuracy_score(keys_l, keys_p))
    assert scores["f1 (macro)"] == pytest.approx(sklearn_metrics.f1_score(keys_l, keys_p, average="macro"))
    binary = score(["f1"], ["Yes", "no", "yes"], ["yes", "yes", "no"], average="binary", positive_label="YES")
    assert binary.values["f1 (binary)"] == pytest.approx(
        sklearn_metrics.f1_score(["yes", "yes", "no"], ["yes", "no", "yes"], pos_label="yes"))


def test_scores_of_a_prediction_field_match_the_reference_libraries():
    result = evaluate_records(RECORDS, ["rouge", "bleu"], ["completion"], prediction_field="prediction")
    predictions = [r["prediction"] for r in RECORDS]
    references = [r["completion"] for r in RECORDS]
    assert result.predictions == predictions and result.scores.n == 3
    assert result.scores.values["bleu"] == pytest.approx(sacrebleu.corpus_bleu(predictions, [references]).score)
    scorer = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True)
    expected = sum(scorer.score(r, p)["rouge1"].fmeasure for p, r in zip(predictions, references)) / 3
    assert result.scores.values["rouge1"] == pytest.approx(expected)
    with pytest.raises(LmlabError, match="give one reference field"):
        evaluate_records(RECORDS, ["accuracy"], ["completion", "label"], prediction_field="prediction")


def test_generated_predictions_are_the_models_greedy_answers(checkpoint):
    loaded = load_model(str(checkpoint))
    prompted = PromptedModel.create(loaded.model, loaded.tokenizer)
    config = GenerationConfig(max_new_tokens=5)
    result = evaluate_records(RECORDS, ["rouge"], ["completion"], prompted, PromptTemplate(
        input_template="{prompt}\n", input_field="prompt", target_field="completion"), config, progress=False)
    for record, prediction in zip(RECORDS, result.predictions):
        ids = loaded.tokenizer.encode(record["prompt"] + "\n", add_special_tokens=True)
        assert prediction == generate(loaded.model, [ids], config, loaded.tokenizer)[0].text.strip()


def run_cli(capsys, *args):
    code = main(["evaluate", *args, "--no-progress"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_perplexity_is_exp_of_the_cross_entropy(checkpoint, tmp_path, capsys):
    text = "#Person1#: Shall we meet at the station at noon?\n#Person2#: Yes, see you there."
    (tmp_path / "text.txt").write_text(text)
    code, out, _ = run_cli(capsys, str(checkpoint), "--data", str(tmp_path / "text.txt"), "--metric", "perplexity")
    assert code == 0
    loaded = load_model(str(checkpoint))
    ids = torch.tensor(loaded.tokenizer.encode(text, add_special_tokens=True))
    with torch.no_grad():
        nll = F.cross_entropy(loaded.model(ids[None]).logits[0, :-1], ids[1:]).item()
    values = dict(re.split(r"\s{2,}", line.strip()) for line in out.splitlines()[1:])
    assert float(values["perplexity"]) == pytest.approx(math.exp(nll), abs=1e-3)
    assert float(values["mean NLL (nats/token)"]) == pytest.approx(nll, abs=1e-4)
    assert values["tokens scored"] == str(len(ids) - 1)


def test_cli_scores_a_prediction_field_and_generated_answers(checkpoint, tmp_path, capsys):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    code, out, _ = run_cli(capsys, "--data", str(data), "--metric", "accuracy,f1", "--prediction-field", "prediction",
                           "--reference-field", "prediction")
    assert code == 0
    assert "accuracy           1.0000" in out and "predictions from   the field 'prediction'" in out
    code, out, _ = run_cli(capsys, str(checkpoint), "--data", str(data), "--metric", "rouge,bleu", "--n", "2",
                           "--max-new-tokens", "4", "--template", "{prompt}\\n")
    assert code == 0
    assert [line.split()[0] for line in out.splitlines()[1:]] == [
        "rouge1", "rouge2", "rougeL", "rougeLsum", "bleu", "bleu", "examples", "predictions"]
    assert "examples              2" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "x.txt", "--metric", "rogue"], "unknown metric 'rogue' (did you mean: rouge?)"),
        (["--data", "x.txt", "--metric", "perplexity,rouge"], "evaluate them separately"),
        (["--data", "{data}", "--metric", "perplexity"], "perplexity scores a plain text file (.txt)"),
        (["--data", "{data}", "--metric", "rouge", "--prompt-field", "question"], "line 1: missing field 'question'"),
        (["--data", "{data}", "--metric", "accuracy", "--reference-field", "label", "--reference-field", "completion",
          "--prediction-field", "prediction"], "give one reference field"),
    ],
)
def test_cli_bad_input_is_one_line(tmp_path, capsys, args, message):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    model = [] if "--prediction-field" in args else ["tiny-llama"]  # a model with --prediction-field is refused
    code, _, err = run_cli(capsys, *model, *[a.replace("{data}", str(data)) for a in args])
    assert code == 1
    assert err.count("\n") == 1 and message in err
