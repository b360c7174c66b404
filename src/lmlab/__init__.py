"""lmlab: the whole life of a transformer language model, on a laptop CPU or a GPU cluster."""

from lmlab.config import PRESETS, ModelConfig, get_preset
from lmlab.errors import LmlabError

__version__ = "0.1.0"


def pipeline(task: str, model=None, **options):
    """A model ready for a task, called with one input or a list: see `lmlab.pipelines`."""
    from lmlab.pipelines import pipeline as make_pipeline

    return make_pipeline(task, model, **options)


__all__ = ["PRESETS", "LmlabError", "ModelConfig", "get_preset", "pipeline", "__version__"]
