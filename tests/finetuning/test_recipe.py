"""The fine-tuning recipe end to end on tiny models and on the embedded MiniLM: the loss against transformers',
full and LoRA runs, early stopping, gradient checkpointing, the memory plan, export to transformers."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
import transformers

from lmlab.data.finetune_data import Collator, DataFormat, Example, load_data
from lmlab.finetuning.evaluate import validation_loss
from lmlab.finetuning.prepare import enable_gradient_checkpointing, plan_memory
from lmlab.finetuning.recipe import EarlyStopping, FinetuneSettings, finetune
from lmlab.hub.adapters import load_adapted_model
from lmlab.generation import GenerationConfig, generate
from lmlab.hub.checkpoint import export_hf
from lmlab.hub.resolve import load_model
from lmlab.models.lora import apply_lora
from lmlab.planning.measure import saved_tensor_bytes
from lmlab.planning.memory import plan_training_memory
from lmlab.resources import resource_path
from lmlab.training.objectives import loss_sum
from lmlab.training.trainer import StepMetrics

from .conftest import colour_records, write_jsonl


@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    folder = tmp_path_factory.mktemp("colours")
    return write_jsonl(folder / "train.jsonl", colour_records(64)), write_jsonl(folder / "val.jsonl", colour_records(8))


def run(model, data, out, **settings):
    defaults = dict(validation=data[1], steps=20, lr=1e-2, batch_size=8, eval_every=10,
                    format=DataFormat(max_length=64), progress=False)
    return finetune(FinetuneSettings(model=str(model), data=data[0], out=out, **{**defaults, **settings}))


@pytest.fixture(scope="module")
def full_run(tiny_model, colours, tmp_path_factory):
    return run(tiny_model, colours, tmp_path_factory.mktemp("full") / "out", method="full")


@pytest.fixture(scope="module")
def lora_run(tiny_model, colours, tmp_path_factory):
    return run(tiny_model, colours, tmp_path_factory.mktemp("lora") / "out", method="lora",
               lora_targets="all-linear,head.proj", lora_rank=4)


def test_loss_equals_transformers_causal_lm_loss(tiny_model, colours, tmp_path):
    """Completion-only labels, aligned with the logits, give transformers' loss with -100 on the prompt."""
    loaded = load_model(str(tiny_model))
    data = load_data(colours[1], DataFormat(), loaded.tokenizer, validation=colours[1])
    export_hf(loaded.model, tmp_path / "hf", loaded.tokenizer)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf")).eval()
    for example in data.train[:3]:
        ours = validation_loss(loaded.model, [example], Collator("generation", 0))
        labels = [t if keep else -100 for t, keep in zip(example.tokens, example.targets)]
        with torch.no_grad():
            theirs = hf(input_ids=torch.tensor([example.tokens]), labels=torch.tensor([labels])).loss
        assert ours == pytest.approx(float(theirs), rel=1e-5)


def test_full_finetune_learns_and_saves_a_loadable_model(full_run, tiny_model, colours):
    assert full_run.n_trainable == full_run.n_total
    out = full_run.out
    assert {p.name for p in out.iterdir()} >= {"model", "finetune.json", "metrics.jsonl", "run.json", "loss.png"}
    assert not (out / "adapter").exists()
    base = load_model(str(tiny_model))
    data = load_data(colours[0], DataFormat(max_length=64), base.tokenizer, validation=colours[1])
    before = validation_loss(base.model, data.validation, Collator("generation", 0))
    assert full_run.scores["val_loss"] < before - 2.0
    loaded = load_model(str(full_run.model_dir))
    reloaded = validation_loss(loaded.model, data.validation, Collator("generation", 0))
    assert reloaded == pytest.approx(full_run.scores["val_loss"], rel=1e-6)
    summary = json.loads((out / "finetune.json").read_text())
    assert summary["steps"] == 20 and summary["peak_memory_bytes"] > 0 and summary["memory_plan"]["total"] > 0


def test_lora_writes_the_adapter_and_the_merged_model(lora_run, tiny_model, colours):
    base = load_model(str(tiny_model)).model
    c = base.config
    per_layer = (4 * (c.d_model + c.n_head * c.d_head) * 2 + 4 * (c.d_model + c.n_kv_head * c.d_head) * 2
                 + 4 * (c.d_model + c.d_ff) * 3)
    assert lora_run.n_trainable == c.n_layer * per_layer + 4 * (c.d_model + c.vocab_size)
    merged = load_model(str(lora_run.model_dir))
    adapted, report = load_adapted_model(lora_run.adapter_dir)
    assert report.n_trainable == lora_run.n_trainable
    data = load_data(colours[1], DataFormat(max_length=64), merged.tokenizer, validation=colours[1])
    batch = Collator("generation", 0)(data.validation)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        torch.testing.assert_close(merged.model(**inputs).logits, adapted.model(**inputs).logits, atol=1e-5, rtol=0)
        assert not torch.allclose(merged.model(**inputs).logits, base(**inputs).logits, atol=1e-3)
    frozen = {k: v for k, v in adapted.model.state_dict().items() if "lora_" not in k}
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in frozen.items())
    before = validation_loss(base, data.validation, Collator("generation", 0))
    assert lora_run.scores["val_loss"] < before - 2.0
    assert merged.model.config.tie_embeddings is False  # the tied head had an adapter: merging unties it


def test_save_adapter_only(tiny_model, colours, tmp_path):
    result = run(tiny_model, colours, tmp_path / "out", method="lora", steps=2, save_adapter_only=True)
    assert result.model_dir is None and not (tmp_path / "out" / "model").exists()
    assert sorted(p.name for p in result.adapter_dir.iterdir()) == [".lmlab.json", "README.md", "adapter.json",
                                                                   "adapter.safetensors", "model_card.json"]


@pytest.mark.parametrize("which", ["full", "lora"])
def test_exported_model_generates_the_same_as_transformers(which, full_run, lora_run, colours, tmp_path):
    result = {"full": full_run, "lora": lora_run}[which]
    loaded = load_model(str(result.model_dir))
    export_hf(loaded.model, tmp_path / "hf", loaded.tokenizer)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf")).eval()
    data = load_data(colours[1], DataFormat(max_length=64), loaded.tokenizer, validation=colours[1])
    prompt = data.validation[0].tokens[:data.validation[0].prompt_length]
    ours = generate(loaded.model, [prompt], GenerationConfig(max_new_tokens=6))[0].tokens
    eos = loaded.model.config.eos_token_id
    with torch.no_grad():
        theirs = hf.generate(torch.tensor([prompt]), max_new_tokens=6, do_sample=False, eos_token_id=eos,
                             pad_token_id=eos)[0, len(prompt):].tolist()
    assert ours == theirs


def test_early_stopping_keeps_the_best_weights(tiny_model, colours):
    settings = FinetuneSettings(model=str(tiny_model), data=colours[0], out="unused", early_stopping=2)
    model = load_model(str(tiny_model)).model
    stopped = []
    trainer = SimpleNamespace(model=model, request_stop=lambda: stopped.append(True))
    monitor = EarlyStopping(settings, data=None, collator=None, tokenizer=None, say=lambda text: None)
    for step, loss in [(10, 2.0), (20, 1.5), (30, 1.6), (40, 1.7)]:
        with torch.no_grad():
            model.tok_emb.weight.fill_(step)
        monitor(StepMetrics(step, loss, 1e-3, 1.0, 0, 0.0, val_loss=loss), trainer)
        assert bool(stopped) == (step == 40)
    monitor.restore_best(model)
    assert monitor.best_step == 20 and bool((model.tok_emb.weight == 20).all())


def test_gradient_checkpointing_gives_the_same_gradients(tiny_model, colours):
    loaded = load_model(str(tiny_model))
    data = load_data(colours[1], DataFormat(max_length=64), loaded.tokenizer, validation=colours[1])
    batch = Collator("generation", 0)(data.train[:4])
    grads = []
    for checkpointing in (False, True):
        model = load_model(str(tiny_model)).model.train()
        if checkpointing:
            assert enable_gradient_checkpointing(model) == model.config.n_layer
        logits = model(batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten()).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, atol=1e-6, rtol=1e-5)


def test_memory_plan_matches_the_planner(tiny_model):
    model = load_model(str(tiny_model)).model
    n = sum(p.numel() for p in model.parameters())
    full = plan_memory(model, batch=4, seq_len=32)
    reference = plan_training_memory(n, "fp32", "adamw", config=model.config, batch=4, seq_len=32)
    assert full.weights + full.gradients + full.optimizer_states == reference.model_states_bytes
    assert full.activations == reference.activations.bytes
    report = apply_lora(model, "q,v", rank=2)
    lora = plan_memory(model, batch=4, seq_len=32)
    assert lora.gradients == 4 * report.n_trainable and lora.optimizer_states == 8 * report.n_trainable
    assert lora.weights == 4 * report.n_total


@pytest.mark.parametrize("method", ["full", "lora"])
def test_memory_plan_counts_the_activations_a_training_step_keeps(tiny_model, method):
    """The planned activations of 4 sequences of 48 input tokens, 19 of them labelled, against the tensors a real
    forward pass of such a batch saves for the backward pass (caught with saved_tensors_hooks)."""
    model = load_model(str(tiny_model)).model.train()
    if method == "lora":  # each adapter keeps its own dropped-out input and dropout mask
        apply_lora(model, "all-linear", rank=4, alpha=8, dropout=0.1)
    collator = Collator("generation", pad_id=0)
    examples = [Example([3 + (i * 7 + j) % 200 for j in range(49)], targets=[False] * 30 + [True] * 19)
                for i in range(4)]
    plan = plan_memory(model, batch=4, seq_len=48, collator=collator, task="generation", labelled=19)
    with torch.random.fork_rng():
        _, saved = saved_tensor_bytes(lambda: loss_sum(model, collator(examples)), model.parameters())
    assert plan.activations == pytest.approx(saved, rel=0.02)


def test_minilm_classifier_beats_the_majority_baseline(tmp_path, minilm_dir):
    result = finetune(FinetuneSettings(
        model="minilm-l6", data=resource_path("reviews.csv"), out=tmp_path / "out", validation_fraction=0.25,
        format=DataFormat(task="classification", max_length=24), method="full", steps=12, lr=2e-4, batch_size=16,
        eval_metric="accuracy", eval_every=12, eval_samples=1000, progress=False))
    loaded = load_model(str(result.model_dir))
    assert loaded.model.config.extra["id2label"] == {"0": "negative", "1": "positive"}
    data = load_data(resource_path("reviews.csv"), DataFormat(task="classification", max_length=24),
                     loaded.tokenizer, validation_fraction=0.25)
    held_out = [e.label for e in data.validation]
    majority = max(held_out.count(0), held_out.count(1)) / len(held_out)
    assert len(held_out) == 30
    assert result.scores["accuracy"] >= majority + 0.25
    export_hf(loaded.model, tmp_path / "hf", loaded.tokenizer)
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "hf")).eval()
    inputs = {k: v for k, v in Collator("classification", 0)(data.validation).items() if k != "labels"}
    with torch.no_grad():
        torch.testing.assert_close(hf(**inputs).logits, loaded.model(**inputs).logits, atol=1e-4, rtol=0)


def test_lora_classifier_adapter_reloads_with_its_head(tiny_model, tmp_path):
    (tmp_path / "train.csv").write_text("text,label\n" + "".join(
        f"the {a} is {c},{c}\n" for a in ("cat", "dog", "bird") for c in ("red", "blue", "green")), encoding="utf-8")
    result = finetune(FinetuneSettings(
        model=str(tiny_model), data=tmp_path / "train.csv", out=tmp_path / "out", validation=tmp_path / "train.csv",
        format=DataFormat(task="classification"), method="lora", steps=3, lr=1e-2, batch_size=3, progress=False))
    merged = load_model(str(result.model_dir))
    adapted, _ = load_adapted_model(result.adapter_dir)
    assert merged.model.config.extra["id2label"] == {"0": "blue", "1": "green", "2": "red"}
    assert adapted.model.config.to_dict() == json.loads((result.adapter_dir / "adapter.json").read_text())["base_config"]
    data = load_data(tmp_path / "train.csv", DataFormat(task="classification"), merged.tokenizer,
                     validation=tmp_path / "train.csv")
    inputs = {k: v for k, v in Collator("classification", 0)(data.train).items() if k != "labels"}
    with torch.no_grad():
        logits = merged.model(**inputs).logits
        assert logits.shape == (9, 3)
        torch.testing.assert_close(adapted.model(**inputs).logits, logits, atol=1e-5, rtol=0)
