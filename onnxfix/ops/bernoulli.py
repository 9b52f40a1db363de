"""Bernoulli: y = (u < p), u ~ U[0, 1)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import TensorProto

from onnxfix.errors import ModelError
from onnxfix.ops.base import (
    FLOAT_TYPES,
    Dtypes,
    Inconsistent,
    RandomOp,
    attrs_of,
    dtype_name,
    float_input_type,
    label,
    narrow_uniform_problem,
    np_dtype,
    wide_noise,
    widened,
)
from onnxfix.ops.noise import UNIFORM
from onnxfix.stats import bernoulli_fit

_CASTABLE = {
    TensorProto.FLOAT16, TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.BFLOAT16,
    TensorProto.UINT8, TensorProto.UINT16, TensorProto.UINT32, TensorProto.UINT64,
    TensorProto.INT8, TensorProto.INT16, TensorProto.INT32, TensorProto.INT64, TensorProto.BOOL,
}

if TYPE_CHECKING:  # the builder is only handed in: importing it would close a cycle
    pass


class BernoulliOp(RandomOp):
    """y = (u < p), u ~ U[0,1): the spec's own function body, with the noise made explicit."""

    op_type = "Bernoulli"

    def dtypes(self, node: onnx.NodeProto, input_type) -> Dtypes:
        p_type = float_input_type(node, input_type)
        attrs = attrs_of(node)
        draw = int(attrs.get("dtype", p_type))
        if draw in (TensorProto.STRING, TensorProto.UNDEFINED) or draw not in _CASTABLE:
            raise ModelError(f"{label(node)}: dtype {dtype_name(draw)} is not allowed")
        return Dtypes(draw, wide_noise(p_type), p_type)

    def input_role(self, index: int) -> str | None:
        return "probability" if index == 0 else None

    def probability_inputs(self, node) -> list[str]:
        return [node.input[0]]

    def distribution(self, attrs: dict) -> dict:
        return {"family": UNIFORM, "noise": "standard uniform U[0, 1)",
                "transform": "Ceil(Clip(p, 0, 1) - u): 1 where u < p (1 with probability p)"}

    def noise_dtype_problem(self, node, fed: int) -> str:
        """p is data and may lie anywhere in [0, 1]: a grid of float16 uniforms rounds it."""
        return narrow_uniform_problem(node, fed, lambda name, step: (
            f"{name} uniforms step by up to {step:.2g} below 1, so every p is rounded to "
            f"that grid (p above {1 - step:.5g} always draws 1)"))

    def transform_text(self, attrs: dict) -> str:
        return "Ceil(Clip(p, 0, 1) - noise)"

    def transform(self, b, noise, node, attrs, dt) -> None:
        """Ceil(Clip(p, 0, 1) - u): 1 where u < p, 0 where u >= p (the difference lies in
        (-1, 1]).

        No compare and no Cast unless the draw's dtype asks for one: ncnn has neither, and
        every runtime has Sub and Ceil. Ceil of (-1, 0) is -0.0: Abs makes a float draw's
        zeros +0.0, bit for bit what Cast(u < p) gave.
        """
        p = widened(b, node.input[0], dt, "p_wide")
        npt = np_dtype(dt.noise)
        # p outside [0, 1] (not a probability) must still draw 0 or 1, as u < p did
        p = b.clip(p, np.array(0, npt), np.array(1, npt), "p_clipped")
        diff = b.op("Sub", [p, noise], "p_minus_u")
        float_draw = dt.draw in FLOAT_TYPES
        last = dt.draw == dt.noise
        hit = b.op("Ceil", [diff], "ceil", output=node.output[0] if last and not float_draw
                   else None)
        if float_draw:
            hit = b.op("Abs", [hit], "hit", output=node.output[0] if last else None)
        if not last:
            b.op("Cast", [hit], "cast", output=node.output[0], to=dt.draw)

    def forward(self, noise, attrs, inputs) -> dict:
        return {0: noise < inputs[0]}

    def deterministic(self, b, node, attrs, dt) -> str:
        half = b.constant(np.array(0.5, dtype=np_dtype(dt.param or dt.noise)), "half")
        likely = b.op("Greater", [node.input[0], half], "likely")
        b.op("Cast", [likely], "cast", output=node.output[0], to=dt.draw)
        return "the most probable outcome, p > 0.5"

    def standardize(self, outputs, attrs, inputs, noise_dtype) -> np.ndarray:
        p = inputs[0].astype(np.float64)
        hit = outputs[0].astype(bool)
        # a hit needs u < p (take p/2), a miss u >= p (take the middle of [p, 1)).
        u = np.where(hit, p / 2, (p + 1) / 2).astype(noise_dtype)
        bad = (hit & ~(u < inputs[0])) | (~hit & (u < inputs[0]))
        if bad.any():
            raise Inconsistent("a Bernoulli outcome is impossible for its probability "
                               "(p outside [0, 1])")
        return u

    def distribution_test(self, h):
        node = h.node
        p = h.draw.inputs[0].reshape(-1)[:h.max_elements]
        p = p[np.isfinite(p) & (p >= 0) & (p <= 1)]
        if not p.size:
            return [], ["no probability in [0, 1] to test"]
        trials = max(1, h.trials // p.size)
        y = h.transform(h.noise([trials, p.size]), {node.input[0]: p}, node, node.output[0])
        hits = (y != 0).sum(axis=0)
        chi = bernoulli_fit(hits, p.astype(np.float64), trials)
        return [("ideal", chi, trials * p.size)], [
            "not compared with onnxruntime's own draws: they are 1 with probability 1 - p (the "
            "op's function body), onnxfix's 1 with probability p (the op's text)"]


# The registry (ops/__init__) collects every module's OPS, ordered by RANK.
RANK = 1
OPS = (BernoulliOp(),)
