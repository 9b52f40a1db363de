"""onnxfix: make ONNX models with random-sampling nodes deterministic and deployable."""

from .api import rewrite
from .errors import ModelError, OnnxfixError, ParityError, UsageError

__all__ = ["ModelError", "OnnxfixError", "ParityError", "UsageError", "rewrite"]
__version__ = "0.1.0"
