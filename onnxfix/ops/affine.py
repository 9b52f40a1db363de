"""RandomNormal(Like) and RandomUniform(Like): a continuous draw offset + factor * noise."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import TensorProto

from onnxfix.errors import ModelError, one_line
from onnxfix.ops.base import (
    MAX_ELEMENTS,
    Dtypes,
    RandomOp,
    attrs_of,
    label,
    np_dtype,
    require_float,
    with_attr,
)
from onnxfix.ops.noise import NORMAL, UNIFORM, standard_noise
from onnxfix.stats import goodness_of_fit, homogeneity

if TYPE_CHECKING:  # the builder is only handed in: importing it would close a cycle
    from onnxfix.graph.builder import NodeBuilder


class AffineOp(RandomOp):
    """A continuous draw `offset + factor * noise` (normal: mean/scale, uniform: low/high)."""

    data_dependent = False
    discrete = False  # offset + factor * noise: tested only when its noise is fed narrower

    def __init__(self, op_type: str, family: str, like_input: bool):
        self.op_type = op_type
        self.family = family
        self.like_input = like_input  # the *Like form: shape and default dtype from input 0

    def offset_factor(self, attrs: dict) -> tuple[float, float]:
        if self.family == NORMAL:
            return float(attrs.get("mean", 0.0)), float(attrs.get("scale", 1.0))
        low, high = float(attrs.get("low", 0.0)), float(attrs.get("high", 1.0))
        return low, high - low

    def check_attributes(self, node: onnx.NodeProto) -> None:
        """Parameters no distribution has: NaN or infinite, or low above high."""
        attrs = attrs_of(node)
        names = ("mean", "scale") if self.family == NORMAL else ("low", "high")
        for name in names:
            if name in attrs and not math.isfinite(float(attrs[name])):
                raise ModelError(f"{label(node)}: attribute {name}={attrs[name]} is not a "
                                 f"finite number")
        if self.family == NORMAL and float(attrs.get("scale", 1.0)) < 0:
            raise ModelError(f"{label(node)}: scale={attrs['scale']} is negative (a standard "
                             f"deviation)")
        if self.family == UNIFORM and float(attrs.get("low", 0.0)) > float(attrs.get("high", 1.0)):
            raise ModelError(f"{label(node)}: low={attrs.get('low', 0.0)} is above "
                             f"high={attrs.get('high', 1.0)}")

    @property
    def reads_input(self) -> bool:
        return self.like_input

    def ort_abort_reason(self, node: onnx.NodeProto) -> str:
        """Why onnxruntime would abort the process drawing from this node ('' if it would
        not).

        Its kernels hand the parameters to std::normal_distribution /
        std::uniform_real_distribution, which assert (and abort the process) on scale <= 0
        or low >= high.
        """
        offset, factor = self.offset_factor(attrs_of(node))
        if factor <= 0:
            what = "scale" if self.family == NORMAL else "high - low"
            return f"{label(node)} has {what} = {factor:g}"
        return ""

    def distribution(self, attrs: dict) -> dict:
        if self.family == NORMAL:
            mean, scale = self.offset_factor(attrs)
            return {"family": NORMAL, "mean": mean, "scale": scale,
                    "noise": "standard normal N(0, 1)", "transform": "mean + scale * eps"}
        low, high = float(attrs.get("low", 0.0)), float(attrs.get("high", 1.0))
        return {"family": UNIFORM, "low": low, "high": high,
                "noise": "standard uniform U[0, 1)", "transform": "low + (high - low) * u"}

    def transform_text(self, attrs: dict) -> str:
        offset, factor = self.offset_factor(attrs)
        return f"{offset:g} + {factor:g} * noise"

    def dtypes(self, node: onnx.NodeProto, input_type) -> Dtypes:
        attrs = attrs_of(node)
        if "dtype" in attrs:
            dt = int(attrs["dtype"])
        elif self.like_input:
            dt = input_type(node.input[0])
            if not dt:
                raise ModelError(f"{label(node)}: cannot tell the element type of its input "
                                 f"'{node.input[0]}'; give the node a dtype attribute")
        else:
            dt = TensorProto.FLOAT
        require_float(node, dt)
        return Dtypes(dt, dt)

    def capture_inputs(self, node: onnx.NodeProto) -> list[str]:
        return []

    def static_shape(self, node: onnx.NodeProto) -> list[int] | None:
        if self.like_input:
            return None
        attrs = attrs_of(node)
        if "shape" not in attrs:
            raise ModelError(f"{label(node)}: missing the required shape attribute")
        shape = [int(d) for d in attrs["shape"]]
        if any(d < 0 for d in shape):
            raise ModelError(f"{label(node)}: negative dimension in shape {shape}")
        if math.prod(d for d in shape if d) > MAX_ELEMENTS:
            raise ModelError(f"{label(node)}: absurd shape {shape}: too large (more than 2**48 "
                             f"elements)")
        return shape

    def noise_shape(self, node: onnx.NodeProto, shape_of) -> list | None:
        static = self.static_shape(node)
        if static is not None:
            return static
        return shape_of(node.input[0]) if node.input and node.input[0] else None

    def transform(self, b: NodeBuilder, noise: str, node: onnx.NodeProto, attrs: dict,
                  dt: Dtypes) -> None:
        offset, factor = self.offset_factor(attrs)
        npt = np_dtype(dt.draw)
        steps = []
        if factor != 1.0:
            steps.append(("Mul", factor, "scale" if self.family == NORMAL else "range"))
        if offset != 0.0:
            steps.append(("Add", offset, "mean" if self.family == NORMAL else "low"))
        output = node.output[0]
        if not steps:
            b.op("Identity", [noise], "sample", output=output)
            return
        current = noise
        for i, (op, value, hint) in enumerate(steps):
            const = b.constant(np.array(value, dtype=npt), hint)
            last = i == len(steps) - 1
            current = b.op(op, [current, const], op.lower(), output=output if last else None)

    def forward(self, noise: np.ndarray, attrs: dict, inputs: dict | None = None) -> dict:
        """What the in-graph transform computes, op by op in the draw's dtype."""
        offset, factor = self.offset_factor(attrs)
        t = noise
        if factor != 1.0:
            t = t * np.asarray(factor, dtype=noise.dtype)
        if offset != 0.0:
            t = t + np.asarray(offset, dtype=noise.dtype)
        return {0: t}

    def standardize(self, outputs: dict, attrs: dict, inputs: dict | None = None,
                    noise_dtype=None) -> np.ndarray:
        """Standard noise that the transform maps exactly onto the draw (wherever possible)."""
        draw = outputs[0]
        offset, factor = self.offset_factor(attrs)
        wide = draw.astype(np.float64)
        noise = ((wide - offset) / factor if factor != 0 else wide * 0).astype(draw.dtype)
        return _refine(noise, draw, lambda n: self.forward(n, attrs)[0])

    def standardize_all(self, jobs: list[tuple]) -> list[np.ndarray]:
        """Small draws with the same offset, factor and dtype are standardized together, as
        one flat array of up to BATCH_ELEMENTS: every step of `standardize` (and of
        `_refine`, whose nudges are per element) works element by element, so each draw
        gets the bits it would get alone; a large draw is standardized alone, as before."""
        groups: dict[tuple, list[int]] = {}
        for k, (outputs, attrs, *_) in enumerate(jobs):
            key = (*self.offset_factor(attrs), np.asarray(outputs[0]).dtype)
            groups.setdefault(key, []).append(k)
        result: list = [None] * len(jobs)
        for ks in groups.values():
            batch: list[int] = []
            size = 0
            for k in ks:
                batch.append(k)
                size += np.asarray(jobs[k][0][0]).size
                if size >= BATCH_ELEMENTS or k == ks[-1]:
                    self._standardize_batch(jobs, batch, result)
                    batch, size = [], 0
        return result

    def _standardize_batch(self, jobs: list[tuple], ks: list[int], result: list) -> None:
        draws = [np.asarray(jobs[k][0][0]) for k in ks]
        flat = np.concatenate([d.reshape(-1) for d in draws])
        noise = self.standardize({0: flat}, jobs[ks[0]][1])
        ends = np.cumsum([d.size for d in draws])[:-1]
        for k, part, draw in zip(ks, np.split(noise, ends), draws, strict=True):
            result[k] = part.reshape(draw.shape)

    def standardize_frozen(self, draw: np.ndarray, distribution: dict) -> np.ndarray:
        names = ("mean", "scale") if self.family == NORMAL else ("low", "high")
        return self.standardize({0: draw}, {k: distribution[k] for k in names})

    def deterministic(self, b, node, attrs, dt) -> str:
        if self.family == NORMAL:
            value, text = float(attrs.get("mean", 0.0)), "the mean"
        else:
            low, high = float(attrs.get("low", 0.0)), float(attrs.get("high", 1.0))
            value, text = (low + high) / 2, "the midpoint (low + high) / 2"
        static = self.static_shape(node)
        b.fill(np.array([value], dtype=np_dtype(dt.draw)), node.output[0],
               like=None if static is not None else node.input[0], static=static)
        return f"{text}, {value:g}"

    def sample_draw(self, rng: np.random.Generator, shape: list[int], attrs: dict,
                    dtype: int) -> np.ndarray:
        """One seeded draw of the node's own distribution (constant mode, main graph)."""
        offset, factor = self.offset_factor(attrs)
        base = standard_noise(rng, self.family, shape, np.float64)
        draw = (offset + factor * base).astype(np_dtype(dtype))
        if self.family == UNIFORM and factor > 0:  # rounding must not reach high: [low, high)
            draw = np.minimum(draw, _below(offset + factor, draw.dtype))
        return draw

    def distribution_test(self, h):
        offset, factor = self.offset_factor(attrs_of(h.node))
        if factor <= 0:
            return [], ["a degenerate distribution (zero width)"]
        n, bins = h.affine_samples, h.affine_bins
        arrays = {}
        if self.like_input:
            probe = h.node
            arrays[probe.input[0]] = np.zeros(n, np_dtype(h.draw.natural))
        else:
            probe = with_attr(h.node, "shape", [n])
        out = probe.output[0]
        draws = h.transform(h.noise([n]), arrays, probe, out)
        if self.family == NORMAL:
            # a distribution test only: statistics pulls in decimal, fractions and random
            from statistics import NormalDist  # noqa: PLC0415

            dist = NormalDist(offset, factor)
            edges = [dist.inv_cdf(j / bins) for j in range(1, bins)]
        else:
            edges = [offset + factor * j / bins for j in range(1, bins)]
        ours = _value_counts(draws, edges)
        results = [("ideal", goodness_of_fit(ours, np.full(bins, 1 / bins)), n)]
        try:
            theirs = _value_counts(h.original(probe, arrays, out), edges)
        except Exception as e:  # noqa: BLE001
            return results, [f"onnxruntime cannot run the original for a two-sample test: "
                             f"{one_line(e, 200)}"]
        return [*results, ("original", homogeneity(ours, theirs), n)], []

def _below(value: float, dtype: np.dtype) -> np.ndarray:
    """The largest value of `dtype` below `value`."""
    top = np.asarray(value, dtype=dtype)
    if float(top) >= value:
        top = np.nextafter(top, np.asarray(-np.inf, dtype=dtype))
    return top


def _units_below_one(elem_type: int) -> int:
    """How many distinct values a float type has in [0, 1) (zero, subnormals, normals)."""
    bits, exp_bits = {TensorProto.FLOAT16: (10, 5), TensorProto.BFLOAT16: (7, 8)}[elem_type]
    negative_exponents = 2 ** (exp_bits - 1) - 2  # binades [2^-k, 2^-k+1), k = 1 .. bias-1
    return (negative_exponents + 1) * 2**bits


def _refine(noise: np.ndarray, target: np.ndarray, forward, rounds: int = 4) -> np.ndarray:
    """Nudge noise by single ulps where rounding inside `forward` misses the target exactly.

    The parity check promises exact reproduction: the captured draw, standardized and pushed
    back through the in-graph ops, must give the same bits the original produced.
    """
    if not np.issubdtype(noise.dtype, np.floating):
        return noise
    noise = np.array(noise)  # a copy, and an array even for 0-d noise (not a numpy scalar)
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
        # np.array, not the numpy scalar np.abs returns for 0-d input: it is assigned below
        d = np.array(np.abs(got.astype(np.float64) - target.astype(np.float64)))
    both_nan = np.isnan(got) & np.isnan(target)
    d[both_nan] = 0.0
    d[np.isnan(d)] = np.inf
    return d


def _value_counts(values: np.ndarray, edges: list[float]) -> np.ndarray:
    """How many values fall in each cell between the edges."""
    cells = np.searchsorted(np.asarray(edges), values.astype(np.float64).reshape(-1),
                            side="right")
    return np.bincount(cells, minlength=len(edges) + 1)


# Elements standardized in one pass by standardize_all: enough to spread numpy's per-call cost
# over many small draws, few enough that its float64 temporaries stay under a megabyte.
BATCH_ELEMENTS = 1 << 14

# The registry (ops/__init__) collects every module's OPS, ordered by RANK.
RANK = 0
OPS = (AffineOp("RandomNormal", NORMAL, like_input=False),
       AffineOp("RandomNormalLike", NORMAL, like_input=True),
       AffineOp("RandomUniform", UNIFORM, like_input=False),
       AffineOp("RandomUniformLike", UNIFORM, like_input=True))
