"""onnxfix: make ONNX models with random-sampling nodes deterministic and deployable."""

from onnxfix.api import inspect, noise_feeds, rewrite
from onnxfix.errors import ModelError, OnnxfixError, ParityError, UsageError

__all__ = ["ModelError", "OnnxfixError", "ParityError", "UsageError", "inspect", "noise_feeds",
           "rewrite"]
__version__ = "0.1.0"
