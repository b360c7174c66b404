"""The fifteen task pipelines: `lmlab.pipeline(task, model=None, **options)`, as transformers' `pipeline`.

One module per task family: classification.py (text classification, sentiment,
NLI pairs, zero-shot), token_classification.py (NER), question_answering.py,
generation.py (text generation, text2text, summarization, translation,
conversation, table QA), fill_mask.py, embeddings.py (feature extraction,
sentence similarity); registry.py names them. Pooling lives in
`lmlab.models.pooling`.
"""

from lmlab.pipelines.base import Pipeline
from lmlab.pipelines.registry import TASKS, pipeline

__all__ = ["TASKS", "Pipeline", "pipeline"]
