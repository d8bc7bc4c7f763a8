"""Model compression: knowledge distillation, quantization-aware training and iterative prune -> fine-tune live
in the training loop (:mod:`dltricks.train.distill`, :mod:`dltricks.train.compression`, the recipe's ``distill``
and ``compress`` sections); here are what comes after training, and those two called as functions:

* :mod:`~dltricks.compress.quantize`: post-training static int8 (FX graph mode, x86), dynamic int8, and
  :func:`quantize_aware` (``fit`` with ``compress.qat``);
* :mod:`~dltricks.compress.prune`: unstructured magnitude pruning (one-shot, or :func:`prune_finetune`, ``fit``
  with ``compress.prune_amounts``) and structured channel pruning that rebuilds a smaller dense model;
* :mod:`~dltricks.compress.storage`: int8 models as safetensors files (no pickle);
* :mod:`~dltricks.compress.export`: ONNX export checked in onnxruntime, onnxruntime int8;
* :mod:`~dltricks.compress.report`: every variant of a trained model measured side by side (accuracy,
  size, parameters, non-zeros, MACs, latency) with a Pareto plot; ``dltricks compress RUN``.
"""

from dltricks.compress.export import check_onnx, export_onnx, onnx_session, quantize_onnx
from dltricks.compress.prune import count_nonzero, prune_channels, prune_finetune, prune_unstructured
from dltricks.compress.quantize import convert_qat, prepare_qat, quantize_aware, quantize_dynamic, quantize_static
from dltricks.compress.report import METHODS, compress_model, compress_run, parse_methods
from dltricks.compress.storage import load_quantized, save_quantized

__all__ = ["quantize_static", "quantize_dynamic", "prepare_qat", "convert_qat", "quantize_aware", "save_quantized",
           "load_quantized", "prune_unstructured", "prune_finetune", "prune_channels", "count_nonzero",
           "export_onnx", "check_onnx", "onnx_session", "quantize_onnx", "METHODS", "parse_methods", "compress_model",
           "compress_run"]
