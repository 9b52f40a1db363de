"""The one table of random ops: per op, its standard noise and how it becomes the draw.

Each entry answers four questions about a random node:
- which dtype and shape its draw has (`dtype`, `like_input`),
- which standard noise stands for it and which in-graph ops turn that noise into the draw
  (`transform`, used by input-noise mode),
- how to turn a draw captured from the original back into standard noise (`standardize`,
  used by the parity check),
- how to make one seeded draw (`sample`, used by constant mode).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper

from .builder import NodeBuilder
from .errors import ModelError

FLOAT_TYPES = (TensorProto.FLOAT16, TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.BFLOAT16)

# Standard noise families; the names are also written into the model's noise metadata.
NORMAL = "normal"    # N(0, 1)
UNIFORM = "uniform"  # U[0, 1)


def attrs_of(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def np_dtype(elem_type: int) -> np.dtype:
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))
    except Exception:  # noqa: BLE001 - unknown or unsupported enum value
        raise ModelError(f"unsupported tensor element type {elem_type}") from None


def dtype_name(elem_type: int) -> str:
    try:
        return helper.tensor_dtype_to_string(elem_type).removeprefix("TensorProto.").lower()
    except Exception:  # noqa: BLE001
        return f"type{elem_type}"


@dataclass(frozen=True)
class AffineOp:
    """A continuous draw `offset + factor * noise` (normal: mean/scale, uniform: low/high)."""

    op_type: str
    family: str
    like_input: bool  # the *Like form: shape (and default dtype) come from input 0

    # -- attributes ----------------------------------------------------------------------
    def offset_factor(self, attrs: dict) -> tuple[float, float]:
        if self.family == NORMAL:
            return float(attrs.get("mean", 0.0)), float(attrs.get("scale", 1.0))
        low, high = float(attrs.get("low", 0.0)), float(attrs.get("high", 1.0))
        return low, high - low

    def distribution(self, attrs: dict) -> dict:
        if self.family == NORMAL:
            mean, scale = self.offset_factor(attrs)
            return {"family": NORMAL, "mean": mean, "scale": scale,
                    "noise": "standard normal N(0, 1)", "transform": "mean + scale * eps"}
        low, high = float(attrs.get("low", 0.0)), float(attrs.get("high", 1.0))
        return {"family": UNIFORM, "low": low, "high": high,
                "noise": "standard uniform U[0, 1)", "transform": "low + (high - low) * u"}

    def dtype(self, node: onnx.NodeProto, input_type: int | None) -> int:
        attrs = attrs_of(node)
        if "dtype" in attrs:
            dt = int(attrs["dtype"])
        elif self.like_input:
            if not input_type:
                raise ModelError(
                    f"{node.op_type} '{node.name}': cannot tell the element type of its input "
                    f"'{node.input[0]}'; give the node a dtype attribute"
                )
            dt = input_type
        else:
            dt = TensorProto.FLOAT
        if dt not in FLOAT_TYPES:
            raise ModelError(
                f"{node.op_type} '{node.name or node.output[0]}': dtype {dtype_name(dt)} is not "
                f"allowed (the op takes float16, float, double or bfloat16)"
            )
        return dt

    def static_shape(self, node: onnx.NodeProto) -> list[int] | None:
        if self.like_input:
            return None
        attrs = attrs_of(node)
        if "shape" not in attrs:
            raise ModelError(f"{node.op_type} '{node.name}': missing the required shape attribute")
        shape = [int(d) for d in attrs["shape"]]
        if any(d < 0 for d in shape):
            raise ModelError(f"{node.op_type} '{node.name}': negative dimension in shape {shape}")
        return shape

    # -- input-noise mode ----------------------------------------------------------------
    def transform(self, b: NodeBuilder, noise: str, output: str, attrs: dict,
                  dtype: int) -> None:
        """Append the nodes computing `output` = offset + factor * `noise`."""
        offset, factor = self.offset_factor(attrs)
        npt = np_dtype(dtype)
        steps = []
        if factor != 1.0:
            steps.append(("Mul", factor, "scale" if self.family == NORMAL else "range"))
        if offset != 0.0:
            steps.append(("Add", offset, "mean" if self.family == NORMAL else "low"))
        if not steps:
            b.op("Identity", [noise], "sample", output=output)
            return
        current = noise
        for i, (op, value, hint) in enumerate(steps):
            const = b.constant(np.array(value, dtype=npt), hint)
            last = i == len(steps) - 1
            current = b.op(op, [current, const], op.lower(), output=output if last else None)

    def forward(self, noise: np.ndarray, attrs: dict) -> np.ndarray:
        """What the in-graph transform computes, op by op in the draw's dtype."""
        offset, factor = self.offset_factor(attrs)
        t = noise
        if factor != 1.0:
            t = t * np.asarray(factor, dtype=noise.dtype)
        if offset != 0.0:
            t = t + np.asarray(offset, dtype=noise.dtype)
        return t

    def standardize(self, draw: np.ndarray, attrs: dict) -> np.ndarray:
        """Standard noise that the transform maps exactly onto `draw` (wherever possible)."""
        offset, factor = self.offset_factor(attrs)
        wide = draw.astype(np.float64)
        noise = ((wide - offset) / factor if factor != 0 else wide * 0).astype(draw.dtype)
        return _refine(noise, draw, lambda n: self.forward(n, attrs))

    # -- constant mode -------------------------------------------------------------------
    def sample(self, rng: np.random.Generator, shape: list[int], attrs: dict,
               dtype: int) -> np.ndarray:
        offset, factor = self.offset_factor(attrs)
        base = rng.standard_normal(shape) if self.family == NORMAL else rng.random(shape)
        return (offset + factor * base).astype(np_dtype(dtype))


def _refine(noise: np.ndarray, target: np.ndarray, forward, rounds: int = 4) -> np.ndarray:
    """Nudge noise by single ulps where rounding inside `forward` misses the target exactly.

    The parity check promises exact reproduction: the captured draw, standardized and pushed
    back through the in-graph ops, must give the same bits the original produced.
    """
    if not np.issubdtype(noise.dtype, np.floating):
        return noise
    noise = noise.copy()
    err = _distance(forward(noise), target)
    for _ in range(rounds):
        miss = err > 0
        if not miss.any():
            break
        improved = False
        for toward in (np.inf, -np.inf):
            cand = noise.copy()
            cand[miss] = np.nextafter(noise[miss], np.asarray(toward, dtype=noise.dtype))
            cand_err = _distance(forward(cand), target)
            better = cand_err < err
            if better.any():
                noise[better] = cand[better]
                err[better] = cand_err[better]
                improved = True
        if not improved:
            break
    return noise


def _distance(got: np.ndarray, target: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", over="ignore"):
        d = np.abs(got.astype(np.float64) - target.astype(np.float64))
    both_nan = np.isnan(got) & np.isnan(target)
    d[both_nan] = 0.0
    d[np.isnan(d)] = np.inf
    return d


OP_TABLE: dict[str, AffineOp] = {
    "RandomNormal": AffineOp("RandomNormal", NORMAL, like_input=False),
    "RandomNormalLike": AffineOp("RandomNormalLike", NORMAL, like_input=True),
    "RandomUniform": AffineOp("RandomUniform", UNIFORM, like_input=False),
    "RandomUniformLike": AffineOp("RandomUniformLike", UNIFORM, like_input=True),
}

_DEFAULT_DOMAINS = ("", "ai.onnx")


def is_random_node(node: onnx.NodeProto) -> bool:
    return node.domain in _DEFAULT_DOMAINS and node.op_type in OP_TABLE


def spec_for(node: onnx.NodeProto) -> AffineOp:
    return OP_TABLE[node.op_type]
