"""DPO: the loss, its gradients and the implicit rewards against TRL's DPOTrainer on the same batch, and
`lmlab align --method dpo`."""

from __future__ import annotations

import json
import os

import pytest
import torch
import transformers

from lmlab.alignment.dpo import cache_reference_logps, dpo_loss_sum, score_dpo
from lmlab.alignment.preferences import PairCollator, count_pairs, load_preferences
from lmlab.cli.main import main
from lmlab.data.finetune_data import DataFormat
from lmlab.hub.checkpoint import export_hf, load_checkpoint
from lmlab.hub.convert import guess_family, state_dict_to_hf
from lmlab.models import Transformer
from lmlab.tokenizers import load_tokenizer
from tests.alignment.conftest import colour_pairs, write_jsonl

BETA = 0.1


def _trl_dpo(tmp_path, policy_dir, reference_dir, tokenizer_dir, pairs):
    """TRL's loss, metrics and the policy's gradients on `pairs` (TRL's own collator and compute_loss), given
    the reference log-probabilities lmlab cached, as TRL's `precompute_ref_log_probs` gives them (TRL's fused
    log-softmax of the reference differs from the model's own by ~1e-4 per sequence; lmlab's reference values are
    checked against transformers' forward pass in the test)."""
    os.environ.setdefault("ACCELERATE_USE_CPU", "true")
    datasets = pytest.importorskip("datasets")
    trl = pytest.importorskip("trl")
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    policy = transformers.AutoModelForCausalLM.from_pretrained(str(policy_dir), dtype=torch.float32)
    reference = transformers.AutoModelForCausalLM.from_pretrained(str(reference_dir), dtype=torch.float32)
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_dir / "tokenizer.json"),
                                                     pad_token="<|endoftext|>", eos_token="<|im_end|>")
    examples = [{"prompt_ids": p.prompt, "chosen_ids": p.chosen, "rejected_ids": p.rejected,
                 "ref_chosen_logps": p.reference_logps[0], "ref_rejected_logps": p.reference_logps[1]} for p in pairs]
    args = trl.DPOConfig(output_dir=str(tmp_path / "trl"), beta=BETA, report_to="none", use_cpu=True,
                         per_device_train_batch_size=len(pairs), precompute_ref_log_probs=True, max_length=None)
    trainer = trl.DPOTrainer(model=policy, ref_model=reference, args=args, processing_class=tokenizer,
                             train_dataset=datasets.Dataset.from_list(colour_pairs(len(pairs))))
    batch = DataCollatorForPreference(pad_token_id=0)(examples)
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    return float(loss), metrics, {n: p.grad for n, p in policy.named_parameters()}


def test_dpo_loss_gradients_and_rewards_equal_trl(tmp_path, tiny_model):
    tokenizer = load_tokenizer(tiny_model)
    path = write_jsonl(tmp_path / "p.jsonl", colour_pairs(4))
    pairs = load_preferences(path, DataFormat(task="dpo", chat=False), tokenizer, validation=path).train
    policy = load_checkpoint(tiny_model)
    reference = Transformer(policy.config).init_weights(seed=1).eval()  # a reference that is not the policy
    export_hf(policy, tmp_path / "hf-policy", tokenizer)
    export_hf(reference, tmp_path / "hf-reference", tokenizer)
    cache_reference_logps(reference, pairs, pad_id=0, progress=False)

    policy.train()
    batch = PairCollator(pad_id=0)(pairs)
    loss = dpo_loss_sum(policy, batch, beta=BETA) / count_pairs(batch)
    loss.backward()
    scores = score_dpo(policy, pairs, pad_id=0, beta=BETA)
    grads = state_dict_to_hf({n: p.grad for n, p in policy.named_parameters()}, policy.config,
                             guess_family(policy.config))

    hf_reference = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf-reference"))
    with torch.no_grad():  # the reference log-probabilities, from transformers' logits by hand
        logits = hf_reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        labelled = batch["labels"] != -100
        token = torch.log_softmax(logits, -1).gather(2, batch["labels"].clamp(min=0)[..., None])[..., 0]
        by_hand = (token * labelled).sum(1)
    cached = torch.tensor([p.reference_logps[0] for p in pairs] + [p.reference_logps[1] for p in pairs])
    assert torch.allclose(cached, by_hand, atol=1e-5)

    trl_loss, trl_metrics, trl_grads = _trl_dpo(tmp_path, tmp_path / "hf-policy", tmp_path / "hf-reference",
                                                tmp_path / "hf-policy", pairs)
    assert float(loss) == pytest.approx(trl_loss, abs=1e-6)
    assert scores.chosen_reward == pytest.approx(trl_metrics["rewards/chosen"], abs=1e-6)
    assert scores.rejected_reward == pytest.approx(trl_metrics["rewards/rejected"], abs=1e-6)
    assert scores.margin == pytest.approx(trl_metrics["rewards/margins"], abs=1e-6)
    assert scores.accuracy == pytest.approx(trl_metrics["rewards/accuracies"], abs=1e-6)
    assert scores.chosen_logps == pytest.approx(trl_metrics["logps/chosen"], abs=1e-5)
    compared = 0
    for name, grad in grads.items():
        if name in trl_grads and trl_grads[name] is not None:
            assert torch.allclose(grad, trl_grads[name], atol=1e-6), name
            compared += 1
    assert compared >= len(grads) - 1  # every weight (a tied output matrix is the embedding's)


def test_align_dpo_lora_raises_the_implicit_reward_accuracy(tmp_path, tiny_model):
    records = [{**r, "rejected": "I will not say"} for r in colour_pairs(32)]
    train = write_jsonl(tmp_path / "train.jsonl", records)
    code = main(["align", str(tiny_model), "--method", "dpo", "--data", str(train), "--val", str(train),
                 "--lora-targets", "all-linear", "--lr", "1e-2", "--steps", "20", "--batch-size", "8",
                 "--eval-every", "20", "--no-progress", "--out", str(tmp_path / "dpo")])
    assert code == 0
    scores = json.loads((tmp_path / "dpo" / "finetune.json").read_text())["scores"]
    assert scores["accuracy"] >= 0.9 and scores["margin"] > 0 and scores["kl"] > 0
    assert (tmp_path / "dpo" / "adapter").is_dir() and (tmp_path / "dpo" / "model").is_dir()


def test_align_refuses_a_reward_model_in_one_line(tmp_path, tiny_model, capsys):
    train = write_jsonl(tmp_path / "train.jsonl", colour_pairs(8))
    assert main(["finetune", str(tiny_model), "--task", "reward", "--data", str(train), "--steps", "1",
                 "--batch-size", "2", "--no-progress", "--save-adapter-only", "--method", "full",
                 "--out", str(tmp_path / "rm")]) != 0  # (refused: full fine-tuning has no adapter)
    assert main(["finetune", str(tiny_model), "--task", "reward", "--data", str(train), "--steps", "1",
                 "--batch-size", "2", "--no-progress", "--method", "full", "--out", str(tmp_path / "rm")]) == 0
    capsys.readouterr()
    code = main(["align", str(tmp_path / "rm" / "model"), "--method", "dpo", "--data", str(train),
                 "--out", str(tmp_path / "dpo")])
    err = capsys.readouterr().err.strip()
    assert code != 0 and "is a reward model" in err and "\n" not in err and not (tmp_path / "dpo").exists()
