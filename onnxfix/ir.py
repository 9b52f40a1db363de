"""onnxfix as an onnx-ir pass: the same rewrite for in-memory `onnx_ir.Model`s.

`RewritePass` runs `onnxfix.rewrite` - the very code path the CLI uses on a file - on an
`onnx_ir.Model` (e.g. `torch.onnx.export(..., dynamo=True).model`) and composes with onnx-ir's
`PassManager`, `Sequential` and its own passes (`RemoveUnusedNodesPass`, `CheckerPass`, ...).

How the model crosses over, without holding the weights twice: `onnx_ir.save` streams every
initializer above 256 bytes into a private temporary folder (the input model is unchanged), the
file rewrite reads only the skeleton, and the result is deserialized back with its unchanged
weights pointing at the *input's* tensor objects (matched by their offset in the data file), so
no weight is copied in memory. Weights the rewrite creates (constant-mode draws) are read into
memory before the folder is removed. Disk use: one copy of the weights, for the pass's duration.

Needs the optional extra `ir` (`pip install 'onnxfix[ir]'`, onnx-ir >= 1.1).
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import tempfile

try:
    import onnx_ir as ir  # noqa: PLC0415 - optional and heavy: only this entry point
    from onnx_ir import passes as ir_passes
except ImportError as error:  # pragma: no cover - exercised without the extra installed
    raise ImportError("onnxfix.ir needs onnx-ir >= 1.1: pip install 'onnxfix[ir]'") from error

from onnxfix import api
from onnxfix.errors import ParityError, UsageError
from onnxfix.report import RewriteReport

MIN_ONNX_IR = (1, 1)
# Options of `onnxfix.rewrite` the pass decides itself: the model comes from the pass manager,
# the result goes back to it, nothing is written.
_MANAGED = frozenset({"model_or_path", "mode", "output", "weights", "load_weights"})
_MODEL_FILE = "model.onnx"
_DATA_FILE = "model.onnx.data"


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split(".")[:2]:
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


if _version(ir.__version__) < MIN_ONNX_IR:  # pragma: no cover - depends on the installed release
    raise ImportError(f"onnxfix.ir needs onnx-ir >= 1.1, found {ir.__version__}: "
                      f"pip install 'onnxfix[ir]'")


def rewrite_options() -> list[str]:
    """The `onnxfix.rewrite` keyword options a `RewritePass` forwards (mode is its own)."""
    params = inspect.signature(api.rewrite).parameters
    return [name for name in params if name not in _MANAGED]


@dataclasses.dataclass
class RewritePassResult(ir_passes.PassResult):
    """A PassResult that also carries onnxfix's RewriteReport (nodes, new inputs, parity)."""

    report: RewriteReport | None = None


class RewritePass(ir_passes.PassBase):
    """Rewrite every random node of an `onnx_ir.Model` (see `onnxfix.rewrite`).

    Functional: returns a new model and leaves the input untouched (`in_place` and
    `changes_input` are False). The result's unchanged weights are the input's tensor objects,
    shared, not copied. `modified` is True when at least one random node was rewritten.

    Options are those of `onnxfix.rewrite` (`seed`, `dims`, `only`, `exclude`, `noise_dtype`,
    `check`, `atol`, `rtol`, ... - see `rewrite_options()`), forwarded unchanged. The report is
    on the result (`.report`) and on the pass (`.report`, since a PassManager returns a plain
    PassResult). A failed parity check raises `onnxfix.ParityError` with `.report`; inside a
    PassManager it is the cause of onnx-ir's `PassError`.
    """

    def __init__(self, mode: str = "input-noise", *, temp_dir: str | os.PathLike | None = None,
                 **options):
        allowed = rewrite_options()
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise UsageError(f"RewritePass: unknown option(s) {', '.join(unknown)}; "
                             f"options are mode, temp_dir, {', '.join(allowed)}")
        self.mode = mode
        self.temp_dir = temp_dir
        self.options = options
        self.report: RewriteReport | None = None

    @property
    def in_place(self) -> bool:
        return False

    @property
    def changes_input(self) -> bool:
        return False

    def call(self, model: ir.Model) -> RewritePassResult:
        self.report = None
        with tempfile.TemporaryDirectory(prefix="onnxfix-ir-", dir=self.temp_dir) as folder:
            saved: dict[int, ir.TensorProtocol] = {}
            ir.save(model, os.path.join(folder, _MODEL_FILE), external_data=_DATA_FILE,
                    callback=lambda tensor, info: saved.__setitem__(info.offset, tensor))
            try:
                proto, report = api.rewrite(os.path.join(folder, _MODEL_FILE), self.mode,
                                            load_weights=False, **self.options)
            except ParityError as error:
                if error.report is not None:
                    error.report.input = None
                self.report = error.report
                raise
            result = ir.serde.deserialize_model(proto)
            _share_weights(result, saved, folder)
        report.input = None  # the temporary file is gone; the model lived in memory
        self.report = report
        modified = any(record.status == "rewritten" for record in report.nodes)
        return RewritePassResult(result, modified, report)


def _share_weights(model: ir.Model, saved: dict[int, ir.TensorProtocol], folder: str) -> None:
    """Point external weights back at the input's tensors; read any other one into memory."""
    for graph in model.graphs():
        for value in graph.initializers.values():
            tensor = value.const_value
            if not isinstance(tensor, ir.ExternalTensor):
                continue
            original = saved.get(tensor.offset) if str(tensor.location) == _DATA_FILE else None
            if original is not None and _same_tensor(original, tensor):
                value.const_value = original
            else:
                tensor.base_dir = folder
                value.const_value = ir.Tensor(tensor.numpy().copy(), dtype=tensor.dtype,
                                              name=tensor.name)


def _same_tensor(original: ir.TensorProtocol, external: ir.ExternalTensor) -> bool:
    return (original.name == external.name and original.dtype == external.dtype
            and tuple(original.shape) == tuple(external.shape)
            and (external.length is None or external.length == original.nbytes))


__all__ = ["RewritePass", "RewritePassResult", "rewrite_options"]
