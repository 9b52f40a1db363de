"""Re-declare graph outputs whose declared shape contradicts what shape inference proves.

Exporters and hand edits leave wrong declarations behind (a MIGraphX test model declares its
Multinomial output [?, 10] and produces [N, 12]). onnxruntime ignores them; compilers such as
IREE trust them and fail. Only a contradiction is corrected - a different rank, or two fixed
sizes that differ - never a declaration that is merely less precise than inference.
"""

from __future__ import annotations

import onnx

from onnxfix.graph.shapes import infer_facts
from onnxfix.report import ShapeCorrection


def redeclare_output_shapes(model: onnx.ModelProto) -> list[ShapeCorrection]:
    """Correct the main graph's contradicted output shapes in place; return what changed."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    inputs = {i.name for i in probe.graph.input}
    for out in probe.graph.output:
        if out.name not in inputs and out.type.HasField("tensor_type"):
            out.type.tensor_type.ClearField("shape")  # infer it afresh, not merged with it
    facts = infer_facts(probe)
    corrections = []
    for out in model.graph.output:
        declared = _dims(out)
        fact = facts.get(out.name)
        inferred = fact.shape if fact is not None else None
        if out.name in inputs or declared is None or inferred is None:
            continue
        if _contradicts(declared, inferred):
            corrections.append(ShapeCorrection(out.name, declared, list(inferred)))
            _declare(out, inferred)
    return corrections


def _dims(value: onnx.ValueInfoProto) -> list | None:
    t = value.type.tensor_type if value.type.HasField("tensor_type") else None
    if t is None or not t.HasField("shape"):
        return None
    return [int(d.dim_value) if d.HasField("dim_value") else (d.dim_param or None)
            for d in t.shape.dim]


def _contradicts(declared: list, inferred: list) -> bool:
    if len(declared) != len(inferred):
        return True
    return any(isinstance(a, int) and isinstance(b, int) and a != b
               for a, b in zip(declared, inferred, strict=True))


def _declare(value: onnx.ValueInfoProto, dims: list) -> None:
    shape = value.type.tensor_type.shape
    shape.ClearField("dim")
    for d in dims:
        dim = shape.dim.add()
        if isinstance(d, int):
            dim.dim_value = d
        elif d:
            dim.dim_param = d
