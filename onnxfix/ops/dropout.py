"""Training-mode Dropout: mask = (u >= ratio), output = data * mask / (1 - ratio)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import TensorProto

from onnxfix.errors import one_line
from onnxfix.ops.base import (
    Dtypes,
    Inconsistent,
    RandomOp,
    attrs_of,
    float_input_type,
    np_dtype,
    wide_noise,
    widened,
)
from onnxfix.ops.noise import UNIFORM
from onnxfix.stats import goodness_of_fit, homogeneity

if TYPE_CHECKING:  # the builder is only handed in: importing it would close a cycle
    from onnxfix.graph.builder import NodeBuilder


class DropoutOp(RandomOp):
    """Training-mode Dropout: mask = (u >= ratio), output = data * mask / (1 - ratio)."""

    op_type = "Dropout"
    deterministic_noise = None  # no noise stands for 'no mask'

    def applies(self, node, opset, constant_of) -> bool:
        if opset < 7:  # Dropout-1/6: is_test=0 means training (a function's "@ref": maybe)
            is_test = attrs_of(node).get("is_test", 0)
            return isinstance(is_test, str) or int(is_test) == 0
        if opset < 12:  # Dropout-7/10 have no training mode
            return False
        if len(node.input) < 3 or not node.input[2]:
            return False
        flag = constant_of(node.input[2])
        return flag is None or bool(np.asarray(flag).reshape(-1)[0])

    def dtypes(self, node, input_type) -> Dtypes:
        data = float_input_type(node, input_type)
        ratio = input_type(node.input[1]) if len(node.input) > 1 and node.input[1] else None
        return Dtypes(data, wide_noise(ratio or data), ratio or data)

    def capture_inputs(self, node) -> list[str]:
        return [i for i in node.input[:2] if i]

    def input_role(self, index: int) -> str | None:
        return {1: "probability", 2: "switch"}.get(index)

    def expose_outputs(self, node, fresh) -> None:
        """The mask is a draw too: the check conditions on it even where the model drops it."""
        if len(node.output) < 2 or not node.output[1]:
            while len(node.output) < 2:
                node.output.append("")
            node.output[1] = fresh(f"{node.output[0]}_mask")

    def output_type(self, node, index: int, opset: int, draw_type: int) -> int | None:
        if index == 1:  # the mask: bool from Dropout-10, the data's type before
            return TensorProto.BOOL if opset >= 10 else draw_type
        return None

    def seed_attribute(self, value: int):
        return int(value)  # Dropout's seed is an int, the others' a float

    def distribution(self, attrs: dict) -> dict:
        return {"family": UNIFORM, "noise": "standard uniform U[0, 1)",
                "transform": "keep = 1 - Ceil(ratio - u) (1 where u >= ratio); output = "
                             "data * keep / (1 - ratio)"}

    def transform_text(self, attrs: dict) -> str:
        return "data * (1 - Ceil(ratio - noise)) / (1 - ratio)"

    def _ratio(self, b: NodeBuilder, node, attrs, dt: Dtypes) -> str:
        if len(node.input) > 1 and node.input[1]:
            return widened(b, node.input[1], dt, "ratio_wide")
        default = float(attrs.get("ratio", 0.5))
        return b.constant(np.array(default, dtype=np_dtype(dt.noise)), "ratio")

    def transform(self, b, noise, node, attrs, dt) -> None:
        """keep = 1 - Ceil(ratio - u): 1 where u >= ratio, 0 where u < ratio (ratio - u lies
        in (-1, 1)); output = data * (1 / (1 - ratio)) * keep. Sub, Ceil, Mul, Reciprocal run
        everywhere (ncnn has no Cast or compare, onnx2torch no GreaterOrEqual); Casts only
        where a dtype asks: float16 data, the bool mask output where the node has one.
        """
        ratio = self._ratio(b, node, attrs, dt)
        mask_name = node.output[1] if len(node.output) > 1 and node.output[1] else None
        # training_mode fed at run time: keep the data (and an all-true mask) when it is false.
        gated = len(node.input) > 2 and node.input[2] and b.constant_of(node.input[2]) is None
        one = b.constant(np.array(1.0, dtype=np_dtype(dt.noise)), "one")
        if b.opset >= 7:
            drop = b.op("Ceil", [b.op("Sub", [ratio, noise], "ratio_minus_u")], "drop")
            keep = b.op("Sub", [one, drop], "keep")
        else:  # opset-6 broadcasting stretches the second operand only: scalars go last
            below = b.op("Neg", [b.op("Sub", [noise, ratio], "u_minus_ratio")], "ratio_minus_u")
            drop = b.op("Ceil", [below], "drop")
            keep = b.op("Add", [b.op("Neg", [drop], "neg_drop"), one], "keep")
        if mask_name:
            self._mask(b, keep, node, dt, mask_name, gated)
        keep_prob = b.op("Sub", [one, ratio], "keep_prob")
        scale = b.op("Reciprocal", [keep_prob], "scale")
        if dt.noise != dt.draw:
            scale = b.op("Cast", [scale], "scale_cast", to=dt.draw)
            keep = b.op("Cast", [keep], "keep_cast", to=dt.draw)
        scaled = b.op("Mul", [node.input[0], scale], "scaled")
        dropped = b.op("Mul", [scaled, keep], "dropped",
                       output=None if gated else node.output[0])
        if gated:
            b.op("Where", [node.input[2], dropped, node.input[0]], "train_or_not",
                 output=node.output[0])

    @staticmethod
    def _mask(b, keep: str, node, dt: Dtypes, mask_name: str, gated) -> None:
        """The mask output: bool from opset 10, the data's type before."""
        mask_type = TensorProto.BOOL if b.opset >= 10 else dt.draw
        if gated:  # opset >= 12: bool
            kept = b.op("Cast", [keep], "keep_bool", to=TensorProto.BOOL)
            idle = b.op("Not", [node.input[2]], "not_training")
            b.op("Or", [kept, idle], "mask", output=mask_name)
        elif mask_type != dt.noise:
            b.op("Cast", [keep], "mask_cast", output=mask_name, to=mask_type)
        else:
            b.op("Identity", [keep], "mask", output=mask_name)

    def deterministic(self, b, node, attrs, dt) -> str:
        b.op("Identity", [node.input[0]], "identity", output=node.output[0])
        if len(node.output) > 1 and node.output[1]:  # all kept: True, or 1 before Dropout-10
            keep = np.array([True]) if b.opset >= 10 else np.array([1], np_dtype(dt.draw))
            b.fill(keep, node.output[1], like=node.input[0])
        return "no mask: the data unchanged"

    def forward(self, noise, attrs, inputs) -> dict:
        ratio = inputs.get(1, np.asarray(attrs.get("ratio", 0.5), noise.dtype))
        keep = noise >= ratio
        return {1: keep}

    def standardize(self, outputs, attrs, inputs, noise_dtype) -> np.ndarray:
        ratio = np.asarray(inputs.get(1, attrs.get("ratio", 0.5)), dtype=np.float64)
        keep = outputs[1].astype(bool)
        u = np.where(keep, ratio + (1 - ratio) / 2, ratio / 2).astype(noise_dtype)
        if not np.array_equal(u >= np.asarray(ratio, dtype=noise_dtype), keep):
            raise Inconsistent("a Dropout mask is impossible for its ratio")
        return u

    def distribution_test(self, h):
        node, attrs = h.node, attrs_of(h.node)
        data = h.draw.inputs[0].reshape(-1)[:h.max_elements]
        if not data.size:
            return [], ["no data to test"]
        ratio_in = node.input[1] if len(node.input) > 1 and node.input[1] else ""
        ratio = h.draw.inputs[1] if ratio_in else np.asarray(attrs.get("ratio", 0.5))
        r = float(np.asarray(ratio, dtype=np.float64).reshape(-1)[0])
        trials = max(1, h.trials // data.size)
        arrays = {node.input[0]: np.ones(data.size, data.dtype)}
        if ratio_in:
            arrays[ratio_in] = np.asarray(ratio)
        if len(node.input) > 2 and node.input[2]:
            arrays[node.input[2]] = np.asarray(True)
        probe = _with_mask(node)
        keep = h.transform(h.noise([trials, data.size]), arrays, probe, probe.output[1])
        ours = np.array([keep.sum(), keep.size - keep.sum()])
        results = [("ideal", goodness_of_fit(ours, [1 - r, r]), keep.size)]
        if h.opset < 12:
            return results, []
        arrays[node.input[0]] = np.ones((trials, data.size), data.dtype)
        try:
            theirs = h.original(probe, arrays, probe.output[1])
        except Exception as e:  # noqa: BLE001 - onnxruntime may not run it
            return results, [f"onnxruntime cannot run the original for a two-sample test: "
                             f"{one_line(e, 200)}"]
        counts = np.array([theirs.sum(), theirs.size - theirs.sum()])
        return [*results, ("original", homogeneity(ours, counts), keep.size)], []


def _with_mask(node: onnx.NodeProto) -> onnx.NodeProto:
    """A copy of the Dropout node that also writes its mask."""
    probe = onnx.NodeProto()
    probe.CopyFrom(node)
    while len(probe.output) < 2:
        probe.output.append("")
    if not probe.output[1]:
        probe.output[1] = "onnxfix_dist_mask"
    return probe


# The registry (ops/__init__) collects every module's OPS, ordered by RANK.
RANK = 3
OPS = (DropoutOp(),)
