"""Quantization: int8 schemes (schemes.py), int8 and int4 layers and the model swap (quantized_linear.py,
int4.py), the weight formats a model loads in (weight_format.py), and quantization-aware training (qat.py).
It builds on lmlab.models only; the quantized checkpoint format and the `lmlab quantize` recipe live in
lmlab.hub (quantized_checkpoint.py, quantize.py), which loads and saves models."""

from lmlab.quantization.qat import fake_quantize, prepare_qat
from lmlab.quantization.quantized_linear import QuantizedEmbedding, QuantizedLinear, quantize_model
from lmlab.quantization.schemes import QuantizedTensor, QuantSpec, quantize

__all__ = ["QuantSpec", "QuantizedEmbedding", "QuantizedLinear", "QuantizedTensor", "fake_quantize", "prepare_qat",
           "quantize", "quantize_model"]
