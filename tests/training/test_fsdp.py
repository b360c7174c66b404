"""DDP and ZeRO 1-3 under torchrun with 2 CPU processes: the single-process loss curve, the planner's memory,
sharded checkpoints that resume on another number of processes and consolidate, and bad input that stops every
rank with one line."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lmlab.cli.main import main
from lmlab.config import get_preset
from lmlab.errors import LmlabError
from lmlab.finetuning.recipe import finetune
from lmlab.hub.checkpoint import load_checkpoint
from lmlab.models import Transformer
from lmlab.quantization.quantized_linear import quantize_model
from lmlab.quantization.schemes import QuantSpec
from lmlab.training.distributed import DistEnv
from lmlab.training.fsdp import FullyShardedDataParallel, ParallelConfig
from lmlab.training.launch import without_nproc
from lmlab.training.pretrain import pretrain
from tiny import make_tiny_checkpoint
from .strategy_runs import finetune_settings, settings

TIMEOUT_S = 900
STEPS = 50
TRAIN = {"steps": STEPS, "batch_size": 4, "warmup": 5, "eval_every": 25, "eval_batches": 1, "checkpoint_every": STEPS,
         "progress": False}
STRATEGIES = {"ddp": {"strategy": "ddp"}, "zero-1": {"strategy": "fsdp", "zero": 1},
              "zero-2": {"strategy": "fsdp", "zero": 2}, "zero-3": {"strategy": "fsdp", "zero": 3}}
ARCHS = ("decoder", "encoder-decoder")
# constant learning rate after warmup, so a run cut at step 4 and resumed to 8 matches one that ran 8 steps
RESUME = {"steps": 4, "batch_size": 4, "warmup": 2, "lr": 1e-3, "min_lr": 1e-3, "eval_every": 4, "eval_batches": 1,
          "progress": False}
WORKER = Path(__file__).with_name("strategy_runs.py")


def torchrun(args: list[str], cwd: Path, check: bool = True, monitor_interval: float = 0.1) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "--monitor-interval", str(monitor_interval), *args]
    result = subprocess.run(command, cwd=cwd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                            text=True, timeout=TIMEOUT_S)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def curve(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, char_data, bpe_data):
    """One torchrun launch: every strategy on both architectures, and a 4-step ZeRO-3 run to resume; the
    single-process references run here."""
    root = tmp_path_factory.mktemp("strategies")
    data = {"decoder": str(char_data.path), "encoder-decoder": str(bpe_data.path)}
    jobs = [{"out": str(root / arch / name), "arch": arch, "data": data[arch], "train": TRAIN, "parallel": parallel}
            for arch in ARCHS for name, parallel in STRATEGIES.items()]
    jobs.append({"out": str(root / "resumed"), "arch": "decoder", "data": data["decoder"], "train": RESUME,
                 "parallel": STRATEGIES["zero-3"]})
    tuning = {"finetune": str(make_tiny_checkpoint(root / "tiny-llama")), "data": str(root / "colours.jsonl"),
              "steps": 4}
    (root / "colours.jsonl").write_text("".join(
        json.dumps({"prompt": f"What colour is the {thing}?", "completion": f" The {thing} is {colour}."}) + "\n"
        for thing, colour in [("sky", "blue"), ("grass", "green"), ("snow", "white"), ("coal", "black")] * 4))
    jobs.append({**tuning, "out": str(root / "finetuned"), "parallel": STRATEGIES["zero-3"]})
    (root / "jobs.json").write_text(json.dumps(jobs))
    launch = torchrun([str(WORKER), str(root / "jobs.json")], root)
    torch.set_num_threads(1)
    for arch in ARCHS:
        pretrain(settings({"out": str(root / arch / "single"), "arch": arch, "data": data[arch], "train": TRAIN}),
                 DistEnv())
    finetune(finetune_settings({**tuning, "out": str(root / "finetuned-single")}), DistEnv())
    return root, launch.stdout


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_two_processes_follow_the_single_process_curve(runs, arch, strategy):
    root, _ = runs
    single, sharded = curve(root / arch / "single"), curve(root / arch / strategy)
    assert [r["step"] for r in sharded] == [r["step"] for r in single] == list(range(1, STEPS + 1))
    for a, b in zip(single, sharded):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-4)
        if "val_loss" in a:
            assert b["val_loss"] == pytest.approx(a["val_loss"], abs=1e-4)
    assert single[-1]["loss"] < single[0]["loss"] - 0.2  # the curve is a learning curve, not noise around a constant


def test_zero3_fine_tuning_gives_the_single_process_weights(runs):
    root, _ = runs
    sharded, single = load_checkpoint(root / "finetuned" / "model"), load_checkpoint(root / "finetuned-single" / "model")
    for (name, a), b in zip(sharded.state_dict().items(), single.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5), name
    assert not torch.equal(single.tok_emb.weight, load_checkpoint(root / "tiny-llama").tok_emb.weight)  # it trained


def test_each_rank_holds_what_the_planner_says(runs):
    """The report's measured/planned column, for every strategy and rank (fp32 AdamW: 16 B/param before sharding)."""
    _, stdout = runs
    reports = re.findall(r"memory per rank \(([\w-]+), [\d,]+ parameters\).*\n.*\n((?:\s+\d+ .*\n)+)", stdout)
    assert sorted({name for name, _ in reports}) == ["ddp", "zero-1", "zero-2", "zero-3"]
    for name, table in reports:
        rows = [line.split() for line in table.strip().splitlines()]
        assert [row[0] for row in rows] == ["0", "1"]
        for row in rows:
            assert float(row[-3]) == pytest.approx(1.0, abs=0.1), (name, row)
    assert "communication (rank 0" in stdout and "all_gather" in stdout


def test_a_sharded_checkpoint_consolidates_and_resumes_on_one_process(runs, tmp_path, capsys):
    root, _ = runs
    run = root / "resumed"
    assert main(["consolidate", str(run), "--out", str(tmp_path / "whole")]) == 0
    consolidated, trained = load_checkpoint(tmp_path / "whole"), load_checkpoint(run / "model")
    for (name, a), b in zip(consolidated.state_dict().items(), trained.state_dict().values()):
        assert torch.equal(a, b), name
    assert main(["generate", str(tmp_path / "whole"), "--prompt", "the", "--max-new-tokens", "4"]) == 0

    data = next(job["data"] for job in json.loads((root / "jobs.json").read_text()) if job["out"] == str(run))
    longer = {**RESUME, "steps": 8}
    pretrain(settings({"out": str(run), "arch": "decoder", "data": data, "train": longer, "resume": True}), DistEnv())
    pretrain(settings({"out": str(tmp_path / "straight"), "arch": "decoder", "data": data, "train": longer}), DistEnv())
    resumed, straight = curve(run), curve(tmp_path / "straight")
    assert [r["step"] for r in resumed] == list(range(1, 9))
    for a, b in zip(straight, resumed):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-4)


@pytest.mark.parametrize(("parallel", "world_size", "message"), [
    (ParallelConfig("fsdp"), 1, "--strategy fsdp spreads training over several processes, but only one runs"),
    (ParallelConfig(zero=2), 2, "--zero shards the training state: it needs --strategy fsdp"),
    (ParallelConfig("fsdp", zero=1, offload="cpu"), 2, "CPU offload moves FSDP's shards to host memory: it needs "
                                                        "--zero 2 or 3"),
    (ParallelConfig("fsdp", sharding_factor=3), 4, "sharding factor 3 does not divide the 4 processes into groups of "
                                                   "equal size; choose one of 1, 2, 4"),
    (ParallelConfig("zero"), 2, "unknown training strategy 'zero'; choose from ddp, fsdp"),
])
def test_settings_these_processes_cannot_run(parallel, world_size, message):
    with pytest.raises(LmlabError, match=re.escape(message)):
        parallel.check(DistEnv(world_size=world_size))


def test_fsdp_refuses_a_model_it_cannot_shard():
    model = quantize_model(Transformer(get_preset("tiny-gpt2")).init_weights(seed=0), QuantSpec())
    with pytest.raises(LmlabError, match="keeps weights as int8 .a quantized model."):
        FullyShardedDataParallel(DistEnv(world_size=2)).wrap(model)


def test_one_process_cannot_run_fsdp_from_the_cli(char_data, tmp_path, capsys):
    args = ["pretrain", "--data", str(char_data.path), "--out", str(tmp_path / "o"), "--strategy", "fsdp"]
    assert main(args) == 1
    assert "start them with --nproc N or torchrun --nproc_per_node N" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_bad_sharding_factor_stops_every_rank_with_one_line(char_data, tmp_path):
    args = ["-m", "lmlab.cli.main", "pretrain", "--data", str(char_data.path), "--out", str(tmp_path / "o"),
            "--no-progress", "--strategy", "fsdp", "--sharding-factor", "3"]
    result = torchrun(args, tmp_path, check=False, monitor_interval=5)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("lmlab: error:")]
    assert errors == ["lmlab: error: sharding factor 3 does not divide the 2 processes into groups of equal size; "
                      "choose one of 1, 2"]
    assert result.stderr.count("exitcode  : 1 ") == 2  # torchrun's report: both ranks exited with 1 by themselves


def test_resuming_another_model_stops_every_rank_with_one_line(runs, tmp_path):
    root, _ = runs
    data = json.loads((root / "jobs.json").read_text())[0]["data"]
    args = ["pretrain", "--data", data, "--out", str(root / "decoder" / "zero-3"), "--resume", "--set", "n_layer=3",
            "--batch-size", "4", "--warmup", "5", "--no-progress", "--nproc", "2", "--strategy", "fsdp"]
    result = subprocess.run([sys.executable, "-m", "lmlab.cli.main", *args], cwd=tmp_path, capture_output=True,
                            text=True, timeout=TIMEOUT_S, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "holds a different training run (it differs in: model)" in errors[0], result.stderr
    assert "Traceback" not in result.stderr


def test_consolidate_needs_a_sharded_checkpoint(tmp_path, capsys):
    assert main(["consolidate", str(tmp_path), "--out", str(tmp_path / "whole")]) == 1
    assert "is neither a sharded checkpoint (no shards/.metadata) nor a run folder with one" in capsys.readouterr().err
    assert not (tmp_path / "whole").exists()


def test_nproc_is_taken_out_of_the_relaunched_command():
    assert without_nproc(["pretrain", "--nproc", "2", "--out", "o", "--nproc=4", "--steps", "3"]) == [
        "pretrain", "--out", "o", "--steps", "3"]
