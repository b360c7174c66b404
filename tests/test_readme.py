"""The README's tour runs as written: its commands are read from README.md and run in order in a fresh folder.

What the test changes, so that the tour takes seconds instead of hours (everything else is run exactly as
the README writes it):
- the embedded SmolLM2-135M-Instruct (named, or the default model) is a tiny random Llama-style checkpoint
  with a BPE tokenizer and a chat template (tests/tiny.py; d_ff 192 for int4), and minilm-l6 a tiny random BERT with it;
  `--layer 3` of the attention map is `--layer 1` (the tiny model has 2 layers);
- training lengths: `--steps N` and `--epochs E` become `--steps 2`; `lmlab finetune minilm-l6` gets
  `--steps 2`; `lmlab icl` and the ROUGE evaluation answer 2 records (`--n 2`);
- skipped: lines with a `...` placeholder, commands that are not lmlab's (`cd`, `ollama`, `curl`), `lmlab serve`
  (a server runs until stopped; tests/serving covers it),
  `lmlab scaling sweep / fit` (a sweep trains a dozen models; tests/scaling covers it), and the task
  pipelines' block (`lmlab run`, and the NER fine-tune whose train.conll / tweets.txt the tour does not
  write yet; tests/pipelines covers them).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from lmlab.cli.main import main
from lmlab.config import get_preset
from lmlab.hub.checkpoint import save_checkpoint
from lmlab.models import Transformer
from tiny import tiny_tokenizer

README = Path(__file__).resolve().parents[1] / "README.md"
TAKES_MODEL = {"generate", "chat", "icl", "finetune", "evaluate", "quantize"}
DEFAULT_MODEL = "smollm2-135m-instruct"


def tour_commands() -> list[str]:
    """The lmlab commands of the README's tour, in order: fenced bash blocks after '## A tour', with line
    continuations joined, comments dropped and `a && b` split."""
    text = README.read_text(encoding="utf-8")
    tour = text[text.index("## A tour"):]
    tour = tour[: tour.index("\n## ", 1)]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", tour, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            for part in line.split(" && "):
                if not part.startswith("lmlab "):  # curl, cd, ollama: not lmlab's commands
                    continue
                words = shlex.split(part, comments=True)
                if words:
                    commands.append(shlex.join(words))
    return commands


def runnable(command: str) -> bool:
    words = shlex.split(command)
    return "..." not in words and words[1] not in ("scaling", "run", "serve") and "token-classification" not in words


def substitute(command: str, models: dict[str, str]) -> list[str]:
    """The argv the test runs for a tour command (see the module docstring)."""
    words = shlex.split(command)[1:]
    if words[0] in TAKES_MODEL and (len(words) == 1 or words[1].startswith("-")):
        words.insert(1, DEFAULT_MODEL)
    words = [models.get(w, w) for w in words]
    for i, word in enumerate(words[:-1]):
        if word in ("--steps", "--epochs"):
            words[i: i + 2] = ["--steps", "2"]
        if word == "--layer" and words[0] == "inspect":
            words[i + 1] = "1"
    if words[0] == "finetune" and "--steps" not in words:
        words += ["--steps", "2"]
    if words[0] == "icl" or (words[0] == "evaluate" and "rouge" in words):
        words += ["--n", "2"]
    return words


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("models")
    llama = folder / "llama"  # tiny-llama with a feed-forward width int4's kernel packs (a multiple of 16)
    model = Transformer(get_preset("tiny-llama").replace(d_ff=192, max_seq_len=2048)).init_weights(seed=0)
    save_checkpoint(model, llama, tiny_tokenizer(llama, chat=True))
    bert = Transformer(get_preset("tiny-bert")).init_weights(seed=0)
    save_checkpoint(bert, folder / "bert", tiny_tokenizer(folder / "bert"))
    return {DEFAULT_MODEL: str(llama), "minilm-l6": str(folder / "bert")}


def test_the_tour_is_read_from_the_readme():
    commands = tour_commands()
    assert commands[0] == "lmlab data examples"
    assert sum(map(runnable, commands)) >= 25
    assert "lmlab evaluate runs/lora/model --data examples/eval.jsonl --metric rouge --prompt-field dialogue " \
           "--reference-field summary --template 'Summarize the following conversation.\\n\\n{dialogue}'" in commands


def test_the_tour_runs_as_written(tmp_path, monkeypatch, capsys, models):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.stdin", open("/dev/null"))  # `lmlab chat` reads the end of its input and returns
    for command in filter(runnable, tour_commands()):
        argv = substitute(command, models)
        code = main(argv)
        out = capsys.readouterr()
        assert code == 0, f"{command}\n(run as: lmlab {shlex.join(argv)})\n{out.err[-2000:]}"
