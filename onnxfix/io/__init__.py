"""Reading and writing model files (one seam for the rest of onnxfix).

  reader.py      load_skeleton / open_model / load_model: a model without its weights
  validate.py    validate_model: what a model must satisfy before any work
  writer.py      save_with_weights (weights streamed) / save_model_atomic
  atomic.py      replace_atomically: every output appears whole or not at all
  wire.py        the protobuf wire format, the one protobuf parser, PROTOBUF_LIMIT
  skeleton.py    Skeleton: the model and where each weight's bytes are
  tensors.py     every tensor of a model; payload sizes
  external.py    safe access to external data files
  kernel_copy.py moving payloads between files in the kernel
"""

from onnxfix.io.atomic import check_writable, write_text_atomic
from onnxfix.io.reader import (
    checkable,
    load_model,
    load_skeleton,
    materialize,
    open_model,
    parse_model_bytes,
    session_options,
)
from onnxfix.io.skeleton import Skeleton
from onnxfix.io.validate import NO_CHECKER, validate_model
from onnxfix.io.writer import LAYOUTS, Saved, save_model_atomic, save_with_weights

__all__ = [
    "LAYOUTS", "NO_CHECKER", "Saved", "Skeleton", "check_writable", "checkable", "load_model",
    "load_skeleton", "materialize", "open_model", "parse_model_bytes", "save_model_atomic",
    "save_with_weights", "session_options", "validate_model", "write_text_atomic",
]
