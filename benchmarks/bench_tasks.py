"""How good is each task pipeline? One table: task, data, model and method, metric, baseline, wall time.

The sets are the dev splits in ../shared/data/tasks (formats and licences in ../shared/data/README.md),
read from there and never copied; DialogSum is ../shared/data/dialogsum. Rows (--rows, default all):

  sst2-zero-shot    SST-2 dev accuracy, sentiment-analysis default: SmolLM2 label likelihood with contextual
                    calibration (Zhao et al. 2021); baseline: the same without calibration
  sst2-finetuned    SST-2 dev accuracy, MiniLM-L6 + classification head fine-tuned on the 6,920 training sentences
  wnut17            WNUT-17 dev entity F1 (seqeval, exact spans), MiniLM-L6 token classifier fine-tuned on train
  snli              SNLI accuracy, MiniLM-L6 pair classifier fine-tuned on the first --snli-train dev pairs, scored
                    on the rest; baseline: the majority label
  sst2-nli          SST-2 dev accuracy, zero-shot by entailment through that SNLI classifier (Yin et al. 2019)
  stsb              STS-B dev Spearman of cosine similarities, lmlab's MiniLM-L6 pipeline vs sentence-transformers
  xquad-generative  XQuAD SQuAD-v1.1 EM / F1 (official normalization), SmolLM2 extracting the answer from the
                    context's sentence closest to the question (--qa-sentences), constrained greedy decoding,
                    the span's most likely prefix (--qa-whole-span), question words trimmed (--qa-no-trim)
  xquad-extractive  the same, MiniLM-L6 + start/end head fine-tuned on the first half of the articles, scored
                    on the second half (the generative row is also scored on that half when both run)
  flores-fr, flores-de  FLORES-200 BLEU and chrF (sacrebleu), SmolLM2 translating English; baseline: copy source
  wtq               WikiTableQuestions dev denotation accuracy, SmolLM2 with the table in the prompt; baselines:
                    the table's first data cell, the most frequent answer
  dialogsum         DialogSum dev ROUGE, SmolLM2 summarization; baseline: the first three lines of the dialogue
  fill-mask         FLORES English with one word of 4+ letters masked: top-1 / top-5 accuracy, SmolLM2 scoring
                    candidates; baseline: always the most frequent masked word

Fine-tuned rows train MiniLM-L6 here (minutes on 2 cores); --limit N scores the first N examples of each set
(the generative rows take seconds per example). Smoke run:
    python benchmarks/bench_tasks.py --limit 20 --epochs 0.05 --snli-train 200
Full run (an hour or more on 2 cores):
    python benchmarks/bench_tasks.py --out bench_tasks.jsonl
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import re
import shutil
import string
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import lmlab
from lmlab.evaluation.metrics import bleu, rouge
from lmlab.finetuning import DataFormat, FinetuneSettings, finetune
from lmlab.hub.resolve import load_model
from lmlab.io import write_jsonl, write_text

ROWS = ("sst2-zero-shot", "sst2-finetuned", "wnut17", "snli", "sst2-nli", "stsb", "xquad-generative",
        "xquad-extractive", "flores-fr", "flores-de", "wtq", "dialogsum", "fill-mask")
FINETUNED = ("sst2", "wnut17", "snli", "xquad")
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


# ---------------------------------------------------------------- readers (the sets' own formats)

def sst2(data: Path, split: str) -> tuple[list[str], list[int]]:
    rows = [line.split(" ", 1) for line in (data / "tasks/sst2" / f"{split}.txt").read_text().splitlines() if line]
    return [text for _, text in rows], [int(label) for label, _ in rows]


def conll(path: Path) -> list[tuple[list[str], list[str]]]:
    sentences, words, tags = [], [], []
    for line in [*path.read_text().splitlines(), ""]:
        if not line.strip():
            if words:
                sentences.append((words, tags))
            words, tags = [], []
        else:
            token, tag = line.split("\t")[0], line.split("\t")[-1]
            words.append(token)
            tags.append(tag)
    return sentences


def snli(data: Path) -> list[tuple[str, str, str]]:
    folder = data / "tasks/snli"
    parts = [(folder / f"dev.{k}").read_text().splitlines() for k in ("s1", "s2", "labels")]
    return list(zip(*parts))


def write_splits(data: Path, folder: Path, snli_train: int) -> dict[str, Path]:
    """The training files of the rows that train on part of a dev set, in `lmlab finetune`'s formats: the first
    `snli_train` SNLI dev pairs (JSONL text / text_pair / label) and XQuAD articles 1-12 (SQuAD JSON). The rows
    score only the rest, so training and scored examples never overlap."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [{"text": a, "text_pair": b, "label": c} for a, b, c in snli(data)[:snli_train]]
    write_jsonl(folder / "snli_train.jsonl", lines)
    articles = json.loads((data / "tasks/xquad/dev.json").read_text())["data"]
    write_text(folder / "xquad_train.json", json.dumps({"data": articles[:len(articles) // 2]}))
    return {"snli": folder / "snli_train.jsonl", "xquad": folder / "xquad_train.json"}


# ---------------------------------------------------------------- metrics

def squad_normalize(text: str) -> str:
    """SQuAD v1.1's official answer normalization: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def squad_f1(prediction: str, truth: str) -> float:
    pred, gold = squad_normalize(prediction).split(), squad_normalize(truth).split()
    common = sum((collections.Counter(pred) & collections.Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: list[str], answers: list[list[str]]) -> dict[str, float]:
    """Exact match and F1, each the best over an example's gold answers, averaged (the official script)."""
    em = np.mean([max(float(squad_normalize(p) == squad_normalize(a)) for a in golds)
                  for p, golds in zip(predictions, answers)])
    f1 = np.mean([max(squad_f1(p, a) for a in golds) for p, golds in zip(predictions, answers)])
    return {"exact_match": float(em), "f1": float(f1)}


def denotation(prediction: str, targets: list[str]) -> bool:
    """WikiTableQuestions-style denotation match: the predicted values, as a set, equal the targets (numbers
    compared as numbers, text normalized)."""
    def value(text: str):
        text = squad_normalize(text.replace(",", "") if re.fullmatch(r"[\d,.\-]+", text.strip()) else text)
        try:
            return float(text)
        except ValueError:
            return text
    predicted = {value(p) for p in re.split(r"\s*[|;]\s*|,\s+", prediction) if p.strip()}
    return predicted == {value(t) for t in targets}


# ---------------------------------------------------------------- rows

class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.data = args, Path(args.data_dir)
        self.tmp = Path(tempfile.mkdtemp(prefix="bench_tasks."))
        self.results: list[dict] = []
        self._models: dict[str, object] = {}

    def model(self, name: str):
        if name not in self._models:
            self._models[name] = load_model(name)
        return self._models[name]

    def limit(self, items: list) -> list:
        return items[:self.args.limit] if self.args.limit else items

    def report(self, row: str, data: str, n: int, method: str, metrics: dict, baseline: dict | None, start: float):
        result = {"row": row, "data": data, "n": n, "method": method, "metrics": metrics, "baseline": baseline,
                  "seconds": round(time.perf_counter() - start, 1)}
        self.results.append(result)
        show = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        base = ", ".join(f"{k} {v:.4f}" for k, v in (baseline or {}).items())
        print(f"| {row} | {data} (n={n}) | {method} | {show} | {base or '-'} | {result['seconds']:.0f} s |",
              flush=True)

    def finetuned(self, name: str, data: Path | str, fmt: DataFormat, validation: Path | None = None,
                  lr: float = 1e-4, batch_size: int = 32) -> str:
        """The model `--model NAME=DIR` names (fine-tuned beforehand by `lmlab finetune`), else one trained here."""
        if name in self.args.models:
            return self.args.models[name]
        out = self.tmp / name
        result = finetune(FinetuneSettings(model="minilm-l6", data=data, validation=validation, out=out, format=fmt,
                                           method="full", lr=lr, epochs=self.args.epochs, batch_size=batch_size,
                                           progress=self.args.progress))
        return str(result.model_dir)

    def recipe(self, name: str) -> str:
        """How the fine-tuned model of row `name` was made, for the table."""
        given = self.args.models.get(name)
        return f"fine-tuned by lmlab finetune: {given}" if given else f"{self.args.epochs:g} epochs here"

    def sst2_zero_shot(self) -> None:
        start = time.perf_counter()
        texts, gold = (self.limit(x) for x in sst2(self.data, "dev"))
        task = lmlab.pipeline("sentiment-analysis", self.model("smollm2-135m-instruct"), batch_size=16)
        scored = [np.concatenate(parts) for parts in zip(*(task.scorer.scores(texts[i:i + 16])
                                                            for i in range(0, len(texts), 16)))]
        accuracy = {calibrated: float(np.mean(p.argmax(1) == np.array(gold)))
                    for calibrated, p in zip((False, True), scored)}
        self.report("sst2-zero-shot", "SST-2 dev", len(texts), task.describe(), {"accuracy": accuracy[True]},
                    {"uncalibrated accuracy": accuracy[False]}, start)

    def sst2_finetuned(self) -> None:
        start = time.perf_counter()
        path = self.finetuned("sst2", self.data / "tasks/sst2/train.txt", DataFormat(task="classification"),
                              validation=self.data / "tasks/sst2/dev.txt")
        texts, gold = (self.limit(x) for x in sst2(self.data, "dev"))
        task = lmlab.pipeline("text-classification", path, batch_size=32, progress=self.args.progress)
        predicted = [int(o["label"]) for o in task(texts)]
        self.report("sst2-finetuned", "SST-2 dev", len(texts), f"MiniLM-L6 + head, {self.recipe('sst2')}",
                    {"accuracy": float(np.mean(np.array(predicted) == np.array(gold)))},
                    {"majority": max(np.mean(gold), 1 - np.mean(gold))}, start)

    def wnut17(self) -> None:
        from seqeval.metrics import f1_score

        start = time.perf_counter()
        path = self.finetuned("wnut17", self.data / "tasks/wnut17/train.conll",
                              DataFormat(task="token-classification"), validation=self.data / "tasks/wnut17/dev.conll",
                              lr=1e-4, batch_size=16)
        sentences = self.limit(conll(self.data / "tasks/wnut17/dev.conll"))
        task = lmlab.pipeline("ner", path, aggregation_strategy="first", batch_size=32, progress=self.args.progress)
        texts = [" ".join(words) for words, _ in sentences]
        predicted = []
        for (words, _), text, entities in zip(sentences, texts, task(texts)):
            starts = np.cumsum([0] + [len(w) + 1 for w in words[:-1]])
            tags = ["O"] * len(words)
            for e in entities:  # back to word tags: the words the entity's characters cover
                covered = [i for i, s in enumerate(starts) if s < e["end"] and s + len(words[i]) > e["start"]]
                for k, i in enumerate(covered):
                    tags[i] = ("B-" if k == 0 else "I-") + e["entity_group"]
            predicted.append(tags)
        f1 = f1_score([tags for _, tags in sentences], predicted)
        self.report("wnut17", "WNUT-17 dev", len(sentences),
                    f"MiniLM-L6 + token head ({self.recipe('wnut17')}), aggregation first",
                    {"entity_f1": float(f1)}, None, start)

    def snli(self) -> None:
        start = time.perf_counter()
        pairs = snli(self.data)
        train, test = pairs[:self.args.snli_train], self.limit(pairs[self.args.snli_train:])
        path = write_splits(self.data, self.tmp, self.args.snli_train)["snli"]
        self.nli_model = self.finetuned("snli", path, DataFormat(task="pair-classification", max_length=128))
        task = lmlab.pipeline("text-classification", self.nli_model, batch_size=32, progress=self.args.progress)
        predicted = [o["label"] for o in task([{"text": a, "text_pair": b} for a, b, _ in test])]
        gold = [c for _, _, c in test]
        majority = collections.Counter(c for _, _, c in train).most_common(1)[0][0]
        self.report("snli", f"SNLI dev[{self.args.snli_train}:]", len(test),
                    f"MiniLM-L6 + pair head, {self.recipe('snli')}",
                    {"accuracy": float(np.mean([p == g for p, g in zip(predicted, gold)]))},
                    {"majority": float(np.mean([g == majority for g in gold]))}, start)

    def sst2_nli(self) -> None:
        if not hasattr(self, "nli_model"):
            self.snli()
        start = time.perf_counter()
        texts, gold = (self.limit(x) for x in sst2(self.data, "dev"))
        task = lmlab.pipeline("zero-shot-classification", self.nli_model, batch_size=32, progress=self.args.progress)
        out = task(texts, candidate_labels=["negative", "positive"], hypothesis_template="The sentiment is {}.")
        predicted = [int(o["labels"][0] == "positive") for o in out]
        self.report("sst2-nli", "SST-2 dev", len(texts), task.describe(),
                    {"accuracy": float(np.mean(np.array(predicted) == np.array(gold)))}, None, start)

    def stsb(self) -> None:
        from scipy.stats import spearmanr

        start = time.perf_counter()
        rows = [line.split("\t") for line in (self.data / "tasks/stsb/dev.tsv").read_text().splitlines()]
        rows = self.limit([r for r in rows if len(r) >= 7])
        gold = [float(r[4]) for r in rows]
        task = lmlab.pipeline("feature-extraction", self.model("minilm-l6"), pooling="mean", batch_size=64,
                              progress=self.args.progress)
        a, b = np.array(task([r[5] for r in rows])), np.array(task([r[6] for r in rows]))
        ours = spearmanr((a * b).sum(1), gold).statistic
        baseline = {}
        try:
            from sentence_transformers import SentenceTransformer

            from lmlab.hub.resolve import embedded_path

            st = SentenceTransformer(str(embedded_path("minilm-l6")), device="cpu")
            ea, eb = (st.encode([r[i] for r in rows], batch_size=64) for i in (5, 6))
            baseline = {"sentence-transformers spearman": float(spearmanr((ea * eb).sum(1), gold).statistic)}
        except ImportError:
            pass
        self.report("stsb", "STS-B dev", len(rows), "MiniLM-L6 mean pooling + normalization, cosine",
                    {"spearman": float(ours)}, baseline, start)

    def _xquad(self, select: int = 0) -> list[dict]:
        """The questions of XQuAD articles 13-24 (write_splits gives articles 1-12 to training); with `select`,
        instead `select` questions spread evenly over articles 1-12, for choosing settings without looking at
        the scored questions."""
        data = json.loads((self.data / "tasks/xquad/dev.json").read_text())["data"]
        half = len(data) // 2
        questions = [{"question": qa["question"], "context": p["context"], "answers": [a["text"] for a in qa["answers"]]}
                     for article in (data[:half] if select else data[half:])
                     for p in article["paragraphs"] for qa in p["qas"]]
        if select:
            return questions[::max(1, len(questions) // select)][:select]
        return self.limit(questions)

    def xquad_generative(self) -> None:
        start = time.perf_counter()
        a = self.args
        questions = self._xquad(a.xquad_select)
        task = lmlab.pipeline("question-answering", self.model("smollm2-135m-instruct"), batch_size=4,
                              progress=a.progress, constrained=not a.qa_free, shots=a.qa_shots,
                              max_new_tokens=a.qa_max_new_tokens, sentences=a.qa_sentences,
                              best_prefix=not a.qa_whole_span, trim=not a.qa_no_trim)
        out = task([{"question": q["question"], "context": q["context"]} for q in questions])
        where = f"XQuAD dev, {a.xquad_select} questions of articles 1-12" if a.xquad_select else \
            "XQuAD dev, articles 13-24"
        self.report("xquad-generative", where, len(questions),
                    f"{task.describe()}, {a.qa_shots}-shot chat, at most {a.qa_max_new_tokens} tokens",
                    squad_scores([o["answer"] for o in out], [q["answers"] for q in questions]), None, start)

    def xquad_extractive(self) -> None:
        start = time.perf_counter()
        questions = self._xquad()
        path = write_splits(self.data, self.tmp, self.args.snli_train)["xquad"]
        model = self.finetuned("xquad", path, DataFormat(task="question-answering", max_length=384), lr=1e-4,
                               batch_size=16)
        task = lmlab.pipeline("question-answering", model, progress=self.args.progress)
        out = task([{"question": q["question"], "context": q["context"]} for q in questions])
        self.report("xquad-extractive", "XQuAD dev, articles 13-24", len(questions),
                    f"MiniLM-L6 + start/end head trained on articles 1-12, {self.recipe('xquad')}",
                    squad_scores([o["answer"] for o in out], [q["answers"] for q in questions]), None, start)

    def flores(self, target: str) -> None:
        import sacrebleu

        start = time.perf_counter()
        folder = self.data / "tasks/flores"
        source = self.limit((folder / "dev.eng_Latn").read_text().splitlines())
        reference = (folder / f"dev.{target}").read_text().splitlines()[:len(source)]
        task = lmlab.pipeline("translation", self.model("smollm2-135m-instruct"), src_lang="en", tgt_lang=target,
                              max_new_tokens=128, batch_size=8, progress=self.args.progress)
        out = [o[0]["translation_text"] for o in task(source)]

        def scores(hypotheses: list[str]) -> dict[str, float]:
            return {"bleu": bleu(hypotheses, reference).score,
                    "chrf": sacrebleu.corpus_chrf(hypotheses, [reference]).score}
        self.report(f"flores-{target[:2]}", f"FLORES-200 devtest en->{target}", len(source), task.describe(),
                    scores(out), {f"copy-source {k}": v for k, v in scores(source).items()}, start)

    def wtq(self) -> None:
        import csv

        start = time.perf_counter()
        folder = self.data / "tasks/wtq"
        rows = [line.split("\t") for line in (folder / "dev.tsv").read_text().splitlines()[1:]]
        rows = self.limit(rows)
        task = lmlab.pipeline("table-question-answering", self.model("smollm2-135m-instruct"), max_new_tokens=24,
                              batch_size=4, progress=self.args.progress)
        inputs = []
        for _, question, table_path, _ in rows:
            with open(folder / table_path, newline="", encoding="utf-8") as f:
                table = [r for r in csv.reader(f)]
            width = len(table[0])
            inputs.append({"table": [r[:width] + [""] * (width - len(r)) for r in table], "query": question})
        out = task(inputs)
        targets = [r[3].split("|") for r in rows]
        correct = [denotation(o["answer"], t) for o, t in zip(out, targets)]
        # trivial baselines: the table's first data cell, and the answer most frequent among these questions
        first_cell = [denotation(i["table"][1][0] if len(i["table"]) > 1 else "", t) for i, t in zip(inputs, targets)]
        frequent = collections.Counter(r[3] for r in rows).most_common(1)[0][0]
        self.report("wtq", "WikiTableQuestions dev", len(rows), task.describe(),
                    {"denotation_accuracy": float(np.mean(correct))},
                    {"first-cell accuracy": float(np.mean(first_cell)),
                     f"most-frequent-answer ({frequent!r}) accuracy":
                         float(np.mean([denotation(frequent, t) for t in targets]))}, start)

    def dialogsum(self) -> None:
        start = time.perf_counter()
        records = self.limit([json.loads(line) for line in
                              (self.data / "dialogsum/dialogsum.dev.jsonl").read_text().splitlines()])
        task = lmlab.pipeline("summarization", self.model("smollm2-135m-instruct"), max_new_tokens=60, batch_size=4,
                              progress=self.args.progress)
        out = [o[0]["summary_text"] for o in task([r["dialogue"] for r in records])]
        references = [r["summary"] for r in records]
        lead = ["\n".join(r["dialogue"].splitlines()[:3]) for r in records]
        self.report("dialogsum", "DialogSum dev", len(records), task.describe(),
                    {k: v for k, v in rouge(out, references).items() if k != "rougeLsum"},
                    {f"lead-3 {k}": v for k, v in rouge(lead, references).items() if k == "rouge1"}, start)

    def fill_mask(self) -> None:
        start = time.perf_counter()
        rng = random.Random(0)
        sentences = self.limit((self.data / "tasks/flores/dev.eng_Latn").read_text().splitlines())
        masked, answers = [], []
        for sentence in sentences:
            words = sentence.split(" ")
            choices = [i for i, w in enumerate(words) if w.isalpha() and len(w) >= 4]
            i = rng.choice(choices)
            answers.append(words[i])
            masked.append(" ".join(words[:i] + ["<mask>"] + words[i + 1:]))
        task = lmlab.pipeline("fill-mask", self.model("smollm2-135m-instruct"), batch_size=10,
                              progress=self.args.progress)
        out = task(masked, top_k=5)
        top1 = np.mean([o[0]["token_str"].strip() == a for o, a in zip(out, answers)])
        top5 = np.mean([a in [c["token_str"].strip() for c in o] for o, a in zip(out, answers)])
        majority = collections.Counter(answers).most_common(1)[0][1] / len(answers)
        self.report("fill-mask", "FLORES-200 English, one word masked", len(masked), task.describe(),
                    {"top1": float(top1), "top5": float(top5)}, {"most frequent word": majority}, start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated rows to run (default: all)")
    parser.add_argument("--limit", type=int, help="score only the first N examples of each set")
    parser.add_argument("--epochs", type=float, default=2.0, help="fine-tuning epochs (default 2)")
    parser.add_argument("--snli-train", type=int, default=7842, help="SNLI dev pairs to train on (default 7842; the "
                                                                     "remaining 2,000 are scored)")
    parser.add_argument("--threads", type=int, help="torch threads")
    parser.add_argument("--data-dir", default=str(DATA), help=f"the shared data folder (default {DATA})")
    parser.add_argument("--out", help="also write the rows as JSON lines here")
    parser.add_argument("--model", action="append", default=[], metavar="NAME=DIR",
                        help="use this fine-tuned model (an `lmlab finetune` OUT/model folder) instead of training "
                             "one here; NAME is sst2, wnut17, snli or xquad (repeatable)")
    parser.add_argument("--write-splits", metavar="DIR",
                        help="only write the SNLI and XQuAD training splits (for `lmlab finetune`) to DIR")
    parser.add_argument("--progress", action="store_true", help="progress bars")
    qa = parser.add_argument_group("xquad-generative (SmolLM2 answering from the context in its prompt)")
    qa.add_argument("--qa-free", action="store_true",
                    help="let the model write freely (first line kept) instead of the default greedy decoding "
                         "constrained to spans of the context (Castel et al. 2022)")
    qa.add_argument("--qa-shots", type=int, default=3, help="written demonstrations before the question (0-3, "
                                                            "default 3)")
    qa.add_argument("--qa-max-new-tokens", type=int, default=32, help="longest answer in tokens (default 32)")
    qa.add_argument("--qa-whole-span", action="store_true",
                    help="answer with the whole greedy span instead of its most likely prefix, P(prefix, end)")
    qa.add_argument("--qa-no-trim", action="store_true",
                    help="keep stop words and the question's words at the ends of the answer")
    qa.add_argument("--qa-sentences", type=int, default=1, metavar="K",
                    help="read only the K sentences of the context closest to the question by MiniLM-L6 cosine "
                         "(Min et al. 2018); 0 reads the whole context (default 1)")
    qa.add_argument("--xquad-select", type=int, default=0, metavar="N",
                    help="score N questions of articles 1-12 instead of articles 13-24: the questions to choose "
                         "the settings above on, never the scored ones")
    args = parser.parse_args()
    args.models = dict(item.split("=", 1) for item in args.model)
    if args.write_splits:
        for name, path in write_splits(Path(args.data_dir), Path(args.write_splits), args.snli_train).items():
            print(f"{name}: {path}")
        return
    if set(args.models) - set(FINETUNED):
        parser.error(f"--model takes NAME=DIR with NAME one of {', '.join(FINETUNED)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = set(rows) - set(ROWS)
    if unknown:
        parser.error(f"unknown rows {sorted(unknown)}; choose from {', '.join(ROWS)}")
    bench = Bench(args)
    print("| row | data | model and method | metric | baseline | wall time |\n|---|---|---|---|---|---|", flush=True)
    try:
        for row in rows:
            if row.startswith("flores-"):
                bench.flores({"flores-fr": "fra_Latn", "flores-de": "deu_Latn"}[row])
            else:
                getattr(bench, row.replace("-", "_"))()
            if args.out:
                write_jsonl(args.out, bench.results)
    finally:
        shutil.rmtree(bench.tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
