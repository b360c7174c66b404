"""Fine-tuning: full and LoRA, for generation (prompt-completion and chat data) and classification.

lmlab.data.finetune_data reads and tokenizes the data (alignment reads its preference pairs
with it too), prepare.py readies the model (gradient checkpointing, memory plan),
evaluate.py scores it, recipe.py runs the whole procedure.
"""

from lmlab.data.finetune_data import DataFormat, FinetuneData, load_data
from lmlab.finetuning.recipe import FinetuneResult, FinetuneSettings, finetune
from lmlab.hub.adapters import load_adapted_model

__all__ = ["DataFormat", "FinetuneData", "FinetuneResult", "FinetuneSettings", "finetune", "load_adapted_model",
           "load_data"]
