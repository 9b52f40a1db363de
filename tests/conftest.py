"""Shared test helpers: fixture paths, real models (skipped when absent), ORT runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnxfix.ops import RANDOM_OP_TYPES

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
REAL_MODELS = ROOT.parent / "shared" / "real-models"

RANDOM_OPS = set(RANDOM_OP_TYPES)


def fixture_path(name: str) -> Path:
    return FIXTURES / name


def real_model_path(name: str) -> Path:
    path = REAL_MODELS / name
    if not path.exists():
        pytest.skip(f"real model {name} not available ({REAL_MODELS} absent)")
    return path


def parse(text: str) -> onnx.ModelProto:
    model = onnx.parser.parse_model(text)
    onnx.checker.check_model(model, full_check=True)
    return model


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])


def run(model: onnx.ModelProto, feeds: dict, outputs: list[str] | None = None) -> dict:
    sess = session(model)
    names = outputs or [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds), strict=True))


def expose(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of the model with extra tensors exposed as outputs (type from shape inference)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inferred = onnx.shape_inference.infer_shapes(m)
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    have = {o.name for o in m.graph.output}
    for n in names:
        if n not in have:
            m.graph.output.append(onnx.helper.make_tensor_value_info(n, types[n], None))
    return m


def op_types(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def random_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type in RANDOM_OPS]


def input_dims(model: onnx.ModelProto, name: str) -> list:
    for vi in model.graph.input:
        if vi.name == name:
            return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]
    raise KeyError(name)


def full_check(model: onnx.ModelProto) -> None:
    onnx.checker.check_model(model, full_check=True)
    onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
