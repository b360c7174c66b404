"""Run several `pretrain` jobs one after the other in one torchrun launch (one process group, one start-up).

    python -m torch.distributed.run --standalone --nproc_per_node 2 strategy_runs.py JOBS.json

JOBS.json lists jobs: pre-training {"out", "data", "arch", "train": TrainConfig fields, "parallel": ParallelConfig
fields, "resume"}, or full fine-tuning {"finetune": model folder, "out", "data", "steps", "parallel"}. The tests in
test_fsdp.py write it and read what each job wrote.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from lmlab.data.finetune_data import DataFormat
from lmlab.finetuning.recipe import FinetuneSettings, finetune
from lmlab.training.distributed import process_group
from lmlab.training.fsdp import ParallelConfig
from lmlab.training.pretrain import PretrainSettings, pretrain
from lmlab.training.trainer import TrainConfig


def settings(job: dict) -> PretrainSettings:
    train = TrainConfig(**job["train"], parallel=ParallelConfig(**job.get("parallel", {})))
    return PretrainSettings(out=job["out"], arch=job["arch"], data=[job["data"]], train=train,
                            resume=job.get("resume", False), progress=False)


def finetune_settings(job: dict) -> FinetuneSettings:
    return FinetuneSettings(model=job["finetune"], data=job["data"], out=job["out"], method="full", steps=job["steps"],
                            batch_size=4, format=DataFormat(max_length=64), eval_every=job["steps"], progress=False,
                            parallel=ParallelConfig(**job.get("parallel", {})))


if __name__ == "__main__":
    jobs = json.loads(Path(sys.argv[1]).read_text())
    with process_group() as env:
        for job in jobs:
            if "finetune" in job:
                finetune(finetune_settings(job), env)
            else:
                pretrain(settings(job), env)
