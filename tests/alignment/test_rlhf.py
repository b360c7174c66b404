"""RLHF with PPO: the loop on a tiny model, one step checked against the ppo formulas on forward passes by hand,
and the bad inputs of `lmlab align --method ppo`."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from lmlab.alignment.ppo import clipped_policy_loss, clipped_value_loss, gae, kl_penalized_rewards
from lmlab.alignment.rlhf import PPOSettings, align_ppo, closing_tokens, experience, load_models, ppo_loss
from lmlab.alignment.preferences import PairEncoder
from lmlab.cli.main import main
from lmlab.models.heads import attach_head
from lmlab.hub.checkpoint import load_checkpoint, save_checkpoint
from lmlab.io import read_safetensors
from lmlab.models.lora import lora_modules
from lmlab.tokenizers import load_tokenizer
from tests.alignment.conftest import colour_pairs, write_jsonl


@pytest.fixture(scope="module")
def reward_model(tiny_model, tmp_path_factory):
    """The tiny model with a (random) scalar reward head, as `finetune --task reward` writes one."""
    model = load_checkpoint(tiny_model)
    attach_head(model, "sequence-classification", ["reward"], seed=3)
    out = tmp_path_factory.mktemp("rm") / "model"
    save_checkpoint(model, out, load_tokenizer(tiny_model))
    return out


def prompts_file(tmp_path, n=8):
    return write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p["prompt"]} for p in colour_pairs(n)])


def test_ppo_loop_runs_and_reports_a_finite_kl_to_the_reference(tmp_path, tiny_model, reward_model):
    s = PPOSettings(model=str(tiny_model), reward=str(reward_model), prompts=prompts_file(tmp_path), out=tmp_path / "ppo",
                    steps=3, batch_size=4, mini_batches=2, ppo_epochs=2, max_new_tokens=6, lr=5e-2, progress=False)
    result = align_ppo(s)
    kls = [r["kl"] for r in result.history]
    assert len(kls) == 3 and all(math.isfinite(k) for k in kls)
    assert kls[0] == pytest.approx(0.0, abs=1e-6)  # the adapters start at zero: the policy is the reference
    assert kls[-1] > 1e-6  # ... and the updates moved it
    out = tmp_path / "ppo"
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3
    assert (out / "ppo.png").stat().st_size > 0 and (out / "value_head" / "value_head.safetensors").is_file()
    assert json.loads((out / "ppo.json").read_text())["steps"] == 3
    assert load_checkpoint(out / "model").config.head == "lm"


def test_one_ppo_step_equals_the_formulas_on_forward_passes_by_hand(tmp_path, tiny_model, reward_model):
    s = PPOSettings(model=str(tiny_model), reward=str(reward_model), prompts="unused", out="unused", lora_rank=4,
                    kl_coef=0.3, gamma=0.9, lam=0.8, clip_range=0.1, vf_coef=0.5, progress=False)
    m, _ = load_models(s)
    torch.manual_seed(0)
    for module in lora_modules(m.policy).values():  # adapters away from zero: pi_old differs from pi_ref
        torch.nn.init.normal_(module.lora_B, std=0.3)
    encoder = PairEncoder(m.tokenizer, None, m.policy.config.eos_token_id)
    texts = [[{"role": "user", "content": "the cat is red. colour?"}], [{"role": "user", "content": "dog?"}]]
    prompts = [encoder.prompt(t)[0] for t in texts]
    closings = [closing_tokens(encoder, t) for t in texts]
    eos = m.policy.config.eos_token_id
    answers = [[5, 9, 12, eos], [7, 3]]  # one answer that ended, one cut at the length limit
    e = experience(m, prompts, closings, answers, s.kl_coef, s.gamma, s.lam)

    reference = load_checkpoint(tiny_model).eval()
    rm = load_checkpoint(reward_model).eval()

    def logps(model, prompt, answer):  # one row alone, no padding: log p of each answer token
        ids = torch.tensor([prompt + answer])
        logits = model(input_ids=ids).logits[0, len(prompt) - 1:-1]
        return F.log_softmax(logits.float(), -1).gather(1, torch.tensor(answer)[:, None])[:, 0]

    def grid(rows):
        return torch.stack([F.pad(r, (0, 4 - len(r))) for r in rows])

    mask = torch.tensor([[1.0] * 4, [1.0] * 2 + [0.0] * 2])
    with torch.no_grad():
        old = grid([logps(m.policy, p, a) for p, a in zip(prompts, answers)])
        ref = grid([logps(reference, p, a) for p, a in zip(prompts, answers)])
        scores, values = [], []
        head = rm.head.classifier.weight[0]
        for p, a, c in zip(prompts, answers, closings):
            row = p + (a[:-1] if a[-1] == eos else a) + c
            out = rm(input_ids=torch.tensor([row]))
            scores.append(out.logits[0, 0])
            values.append(out.hidden_states[0, len(p) - 1:len(p) - 1 + len(a)] @ head)
        scores, values = torch.stack(scores), grid(values)
    assert torch.allclose(e.logps, old, atol=1e-5) and torch.allclose(e.ref_logps, ref, atol=1e-5)
    assert torch.allclose(e.scores, scores, atol=1e-5) and torch.allclose(e.values, values, atol=1e-5)
    assert float(e.kl.abs().max()) > 1e-3  # the policy is not the reference

    advantages, returns = gae(kl_penalized_rewards(old, ref, scores, s.kl_coef, mask), values, mask, s.gamma, s.lam)
    flat = advantages[mask.bool()]
    whitened = (advantages - flat.mean()) / flat.std(unbiased=False) * mask
    assert torch.allclose(e.advantages, whitened, atol=1e-4) and torch.allclose(e.returns, returns, atol=1e-5)

    for module in lora_modules(m.policy).values():  # an update happened: pi_theta differs from pi_old
        module.lora_B.data.add_(0.05)
    with torch.no_grad():
        m.value_head.linear.weight.add_(0.01)
    loss, parts = ppo_loss(m, e, [1, 0], s)
    with torch.no_grad():
        new = grid([logps(m.policy, p, a) for p, a in zip(prompts, answers)])
        new_values = e.features @ m.value_head.linear.weight[0] * mask
        expected_policy = clipped_policy_loss(new, old, whitened, mask, s.clip_range)
        expected_value = clipped_value_loss(new_values, values, returns, mask, s.value_clip_range)
    assert parts["policy_loss"] == pytest.approx(float(expected_policy), abs=1e-5)
    assert parts["value_loss"] == pytest.approx(float(expected_value), abs=1e-5)
    assert float(loss.detach()) == pytest.approx(float(expected_policy + s.vf_coef * expected_value), abs=1e-5)


def test_a_resumed_ppo_run_takes_the_steps_of_an_uninterrupted_one(tmp_path, tiny_model, reward_model):
    prompts = prompts_file(tmp_path, n=6)  # 6 prompts, 4 a step: prompts stay queued across the checkpoint

    def run(out, steps, resume=False):
        return align_ppo(PPOSettings(model=str(tiny_model), reward=str(reward_model), prompts=prompts, out=out,
                                     steps=steps, batch_size=4, mini_batches=2, ppo_epochs=2, max_new_tokens=6,
                                     lr=5e-2, target_kl=0.5, kl_horizon=20, checkpoint_every=2, resume=resume,
                                     progress=False))

    whole = run(tmp_path / "whole", 4)
    first = run(tmp_path / "parts", 2)
    assert first.history == whole.history[:2]
    assert [p.name for p in (tmp_path / "parts" / "checkpoints").iterdir()] == ["step-0000002"]
    resumed = run(tmp_path / "parts", 4, resume=True)
    assert resumed.history == whole.history  # rewards, KL, losses and sampled answers, exactly
    assert resumed.kl_coef == whole.kl_coef != 0.05  # the adaptive coefficient moved, and carried over
    for folder in ("adapter", "value_head"):
        for name in (tmp_path / "whole" / folder).glob("*.safetensors"):
            a, b = read_safetensors(name), read_safetensors(tmp_path / "parts" / folder / name.name)
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    lines = [(tmp_path / out / "metrics.jsonl").read_text().splitlines() for out in ("whole", "parts")]
    assert lines[0] == lines[1] and len(lines[0]) == 4


def run_cli(capsys, *args):
    capsys.readouterr()
    code = main(["align", *map(str, args), "--no-progress"])
    return code, capsys.readouterr().err.strip()


def test_bad_ppo_inputs_are_one_clear_line(tmp_path, tiny_model, reward_model, capsys):
    prompts = prompts_file(tmp_path)
    pairs = write_jsonl(tmp_path / "pairs.jsonl", colour_pairs(4))
    out = tmp_path / "out"
    cases = [
        (("--method", "ppo", "--reward", tiny_model, "--prompts", prompts), "is not a reward model"),
        (("--method", "ppo", "--reward", reward_model, "--value", tiny_model, "--prompts", prompts), "has no value head"),
        ((reward_model, "--method", "ppo", "--reward", reward_model, "--prompts", prompts), "is a reward model"),
        (("--method", "ppo", "--prompts", prompts), "needs --reward"),
        (("--method", "ppo", "--reward", reward_model, "--prompts", pairs, "--beta", "0.2"),
         "--beta is an option of --method dpo"),
        (("--method", "dpo", "--data", pairs, "--reward", reward_model), "--reward is an option of --method ppo"),
        (("--method", "ppo", "--reward", reward_model, "--prompts", prompts, "--weights", "full"), "LoRA"),
        (("--method", "ppo", "--reward", reward_model, "--prompts", tmp_path / "none.jsonl"), "no such file"),
        (("--method", "ppo", "--reward", reward_model, "--prompts", prompts, "--kl-horizon", "0"),
         "kl horizon must be at least 1"),
    ]
    for args, message in cases:
        model = (tiny_model,) if args[0] == "--method" else ()
        code, err = run_cli(capsys, *model, *args, "--out", out)
        assert code != 0 and message in err and "\n" not in err, (args, err)
        assert not out.exists()


def test_prompts_of_hh_conversations_are_their_shared_turns(tmp_path):
    from lmlab.alignment.rlhf import read_prompts
    from tests.alignment.conftest import hh

    path = write_jsonl(tmp_path / "hh.jsonl", [{"chosen": hh("hi", "hello", "why?", "because"),
                                                "rejected": hh("hi", "hello", "why?", "no")}])
    assert read_prompts(path, "prompt") == [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                                             {"role": "user", "content": "why?"}]]
