"""The one table of random ops: per op, its standard noise and how it becomes the draw.

Each entry answers, for one random node:
- `applies`: is this node random at all (Dropout only is in training mode);
- `dtypes`: the dtype of its draw and of the standard noise that stands for it;
- `noise_shape`: the noise's shape, from the shapes of the node's inputs;
- `transform`: the in-graph ops turning noise into the node's outputs (input-noise mode);
- `forward` / `standardize`: the same transform in numpy, and its inverse, which turns draws
  captured from the original back into standard noise (the parity check);
- `sample`: seeded standard noise (constant mode).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper

from .builder import NodeBuilder
from .errors import ModelError
from .sampler import NORMAL, UNIFORM, below_one, standard_noise

# No tensor has more elements than this; a shape beyond it is refused as absurd.
MAX_ELEMENTS = 2**48

FLOAT_TYPES = (TensorProto.FLOAT16, TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.BFLOAT16)
INDEX_TYPES = (TensorProto.INT32, TensorProto.INT64)

# Standard noise families (NORMAL, UNIFORM, from the sampler) are also written into the
# model's noise metadata.


class Inconsistent(Exception):
    """No standard noise reproduces a captured draw (parity cannot condition on it)."""


def attrs_of(node: onnx.NodeProto) -> dict:
    """Attribute values; inside a function body, a reference to the caller's attribute `s`
    (set per call) reads "@s"."""
    return {a.name: f"@{a.ref_attr_name}" if a.ref_attr_name else helper.get_attribute_value(a)
            for a in node.attribute}


def attribute_refs(attrs: dict) -> dict:
    """The attributes a function body leaves to each call ("@name" values)."""
    return {k: v for k, v in attrs.items() if isinstance(v, str) and v.startswith("@")}


def distribution_of(spec: RandomOp, attrs: dict) -> dict:
    """The node's distribution; parameters a function leaves to each call read "@name"."""
    refs = attribute_refs(attrs)
    plain = {k: v for k, v in attrs.items() if k not in refs}
    return {**spec.distribution(plain), **refs}


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


def _label(node: onnx.NodeProto) -> str:
    return f"{node.op_type} '{node.name or node.output[0]}'"


def _require_float(node: onnx.NodeProto, dt: int, what: str = "dtype") -> int:
    if dt not in FLOAT_TYPES:
        raise ModelError(f"{_label(node)}: {what} {dtype_name(dt)} is not allowed "
                         f"(the op takes float16, float, double or bfloat16)")
    return dt


@dataclass(frozen=True)
class Dtypes:
    draw: int   # the node's first output
    noise: int  # the standard noise input
    param: int = 0  # the probabilities / logits / ratio as the model holds them (0: as noise)


def wide_noise(param_type: int) -> int:
    """The noise dtype of a discrete op: float32, or double when its parameter is double.

    Its comparison (Bernoulli, Dropout) or Gumbel-max (Multinomial) then runs in at least
    float32: float16 parameters are cast up in-graph, never the noise down. float16 uniforms
    have only 15,360 distinct values in [0, 1) and would tie and bias the sample.
    """
    return TensorProto.DOUBLE if param_type == TensorProto.DOUBLE else TensorProto.FLOAT


def _widened(b: NodeBuilder, name: str, dt: Dtypes, hint: str) -> str:
    """`name` (a parameter in dt.param) cast to the noise dtype where they differ."""
    if dt.param and dt.param != dt.noise:
        return b.op("Cast", [name], hint, to=dt.noise)
    return name


class RandomOp:
    op_type = ""
    family = UNIFORM
    # The draw depends on runtime tensors (probabilities, logits, data): constant mode then
    # freezes the standard noise and keeps the transform, instead of freezing the draw.
    data_dependent = True

    def applies(self, node: onnx.NodeProto, opset: int, constant_of) -> bool:
        return True

    def check_attributes(self, node: onnx.NodeProto) -> None:
        """Raise ModelError for attribute values no distribution has."""

    def ort_can_draw(self, node: onnx.NodeProto) -> str:
        """Why onnxruntime would abort drawing from this node ('' if it would not)."""
        return ""

    def dtypes(self, node: onnx.NodeProto, input_type) -> Dtypes:
        raise NotImplementedError

    def noise_shape(self, node: onnx.NodeProto, shape_of) -> list | None:
        """Shape of the noise; shape_of(name) gives a shape (list of int|str|None) or None."""
        return shape_of(node.input[0])

    def draw_shape(self, noise_shape: list | None) -> list | None:
        """Shape of the node's first output, given its noise's shape."""
        return noise_shape

    def capture_inputs(self, node: onnx.NodeProto) -> list[str]:
        """Node inputs whose runtime values `standardize` needs."""
        return [i for i in node.input[:1] if i]

    def distribution(self, attrs: dict) -> dict:
        raise NotImplementedError

    def transform_text(self, attrs: dict) -> str:
        raise NotImplementedError

    def transform(self, b: NodeBuilder, noise: str, node: onnx.NodeProto, attrs: dict,
                  dt: Dtypes) -> None:
        raise NotImplementedError

    def forward(self, noise: np.ndarray, attrs: dict, inputs: dict) -> dict[int, np.ndarray]:
        """Output index -> value, as the transform computes it."""
        raise NotImplementedError

    def standardize(self, outputs: dict[int, np.ndarray], attrs: dict, inputs: dict,
                    noise_dtype: np.dtype) -> np.ndarray:
        raise NotImplementedError

    def noise_dtype_problem(self, node: onnx.NodeProto, fed: int) -> str:
        """Why noise fed as `fed` (narrower than its own dtype) would bias the draw ('' if
        it would not)."""
        return ""

    def sample(self, rng: np.random.Generator, shape: list[int], dtype: int) -> np.ndarray:
        return standard_noise(rng, self.family, shape, np_dtype(dtype))

    def deterministic(self, b: NodeBuilder, node: onnx.NodeProto, attrs: dict,
                      dt: Dtypes) -> str:
        """Append nodes computing the most representative value; return a description."""
        raise NotImplementedError

    def static_shape(self, node: onnx.NodeProto) -> list[int] | None:
        return None


class AffineOp(RandomOp):
    """A continuous draw `offset + factor * noise` (normal: mean/scale, uniform: low/high)."""

    data_dependent = False

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
                raise ModelError(f"{_label(node)}: attribute {name}={attrs[name]} is not a "
                                 f"finite number")
        if self.family == NORMAL and float(attrs.get("scale", 1.0)) < 0:
            raise ModelError(f"{_label(node)}: scale={attrs['scale']} is negative (a standard "
                             f"deviation)")
        if self.family == UNIFORM and float(attrs.get("low", 0.0)) > float(attrs.get("high", 1.0)):
            raise ModelError(f"{_label(node)}: low={attrs.get('low', 0.0)} is above "
                             f"high={attrs.get('high', 1.0)}")

    def ort_can_draw(self, node: onnx.NodeProto) -> str:
        """Why onnxruntime would abort drawing from this node ('' if it would not).

        Its kernels hand the parameters to std::normal_distribution /
        std::uniform_real_distribution, which assert (and abort the process) on scale <= 0
        or low >= high.
        """
        offset, factor = self.offset_factor(attrs_of(node))
        if factor <= 0:
            what = "scale" if self.family == NORMAL else "high - low"
            return f"{_label(node)} has {what} = {factor:g}"
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
                raise ModelError(f"{_label(node)}: cannot tell the element type of its input "
                                 f"'{node.input[0]}'; give the node a dtype attribute")
        else:
            dt = TensorProto.FLOAT
        _require_float(node, dt)
        return Dtypes(dt, dt)

    def capture_inputs(self, node: onnx.NodeProto) -> list[str]:
        return []

    def static_shape(self, node: onnx.NodeProto) -> list[int] | None:
        if self.like_input:
            return None
        attrs = attrs_of(node)
        if "shape" not in attrs:
            raise ModelError(f"{_label(node)}: missing the required shape attribute")
        shape = [int(d) for d in attrs["shape"]]
        if any(d < 0 for d in shape):
            raise ModelError(f"{_label(node)}: negative dimension in shape {shape}")
        if math.prod(d for d in shape if d) > MAX_ELEMENTS:
            raise ModelError(f"{_label(node)}: absurd shape {shape}: too large (more than 2**48 "
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


class BernoulliOp(RandomOp):
    """y = (u < p), u ~ U[0,1): the spec's own function body, with the noise made explicit."""

    op_type = "Bernoulli"

    def dtypes(self, node: onnx.NodeProto, input_type) -> Dtypes:
        p_type = input_type(node.input[0])
        if not p_type:
            raise ModelError(f"{_label(node)}: cannot tell the element type of its input")
        _require_float(node, p_type, "input type")
        attrs = attrs_of(node)
        draw = int(attrs.get("dtype", p_type))
        if draw in (TensorProto.STRING, TensorProto.UNDEFINED) or draw not in _CASTABLE:
            raise ModelError(f"{_label(node)}: dtype {dtype_name(draw)} is not allowed")
        return Dtypes(draw, wide_noise(p_type), p_type)

    def distribution(self, attrs: dict) -> dict:
        return {"family": UNIFORM, "noise": "standard uniform U[0, 1)",
                "transform": "u < p (1 with probability p)"}

    def noise_dtype_problem(self, node, fed: int) -> str:
        """p is data and may lie anywhere in [0, 1]: a grid of float16 uniforms rounds it."""
        if fed not in (TensorProto.FLOAT16, TensorProto.BFLOAT16):
            return ""
        name = dtype_name(fed)
        step = 1 - float(below_one(np_dtype(fed)))
        return (f"{_label(node)}: noise_dtype=\"{name}\" cannot represent its noise "
                f"faithfully: {name} uniforms step by up to {step:.2g} below 1, so every p "
                f"is rounded to that grid (p above {1 - step:.5g} always draws 1); use "
                f"noise_dtype=\"float32\" or \"same\"")

    def transform_text(self, attrs: dict) -> str:
        return "Cast(noise < p)"

    def transform(self, b, noise, node, attrs, dt) -> None:
        p = _widened(b, node.input[0], dt, "p_wide")
        hit = b.op("Less", [noise, p], "less")
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


class MultinomialOp(RandomOp):
    """Gumbel-max: sample = argmax(logits + g), g = -log(-log(u)), u ~ U[0,1) [batch, S, C]."""

    op_type = "Multinomial"

    def dtypes(self, node, input_type) -> Dtypes:
        in_type = input_type(node.input[0])
        if not in_type:
            raise ModelError(f"{_label(node)}: cannot tell the element type of its input")
        _require_float(node, in_type, "input type")
        draw = int(attrs_of(node).get("dtype", TensorProto.INT32))
        if draw not in INDEX_TYPES:
            raise ModelError(f"{_label(node)}: dtype {dtype_name(draw)} is not allowed "
                             f"(the op takes int32 or int64)")
        return Dtypes(draw, wide_noise(in_type), in_type)

    def noise_dtype_problem(self, node, fed: int) -> str:
        if fed not in (TensorProto.FLOAT16, TensorProto.BFLOAT16):
            return ""
        name = dtype_name(fed)
        return (f"{_label(node)}: noise_dtype=\"{name}\" cannot represent its noise "
                f"faithfully: {name} has only {_units_below_one(fed):,} distinct values in "
                f"[0, 1), so the Gumbel-max sample ties and favours low class ids; use "
                f"noise_dtype=\"float32\" or \"same\"")

    def noise_shape(self, node, shape_of) -> list | None:
        logits = shape_of(node.input[0])
        if logits is None or len(logits) != 2:
            return [None, self._samples(node), None]
        return [logits[0], self._samples(node), logits[1]]

    def draw_shape(self, noise_shape: list | None) -> list | None:
        return None if noise_shape is None else noise_shape[:-1]

    @staticmethod
    def _samples(node) -> int:
        n = int(attrs_of(node).get("sample_size", 1))
        if n < 1:
            raise ModelError(f"{_label(node)}: sample_size {n} must be at least 1")
        return n

    def distribution(self, attrs: dict) -> dict:
        return {"family": UNIFORM, "noise": "standard uniform U[0, 1) [batch, sample_size, "
                                           "classes]",
                "sample_size": int(attrs.get("sample_size", 1)),
                "transform": "argmax(logits + (-log(-log(u))), axis=-1) (Gumbel-max)"}

    def transform_text(self, attrs: dict) -> str:
        return "argmax(logits - log(-log(noise)))"

    def transform(self, b, noise, node, attrs, dt) -> None:
        log_u = b.op("Log", [noise], "log_u")
        neg = b.op("Neg", [log_u], "neg_log_u")
        log2 = b.op("Log", [neg], "log_neg_log_u")
        gumbel = b.op("Neg", [log2], "gumbel")
        logits = b.unsqueeze(_widened(b, node.input[0], dt, "logits_wide"), 1, "logits_3d")
        scores = b.op("Add", [logits, gumbel], "scores")
        if dt.draw == TensorProto.INT64:
            b.op("ArgMax", [scores], "argmax", output=node.output[0], axis=2, keepdims=0)
        else:
            idx = b.op("ArgMax", [scores], "argmax", axis=2, keepdims=0)
            b.op("Cast", [idx], "cast", output=node.output[0], to=dt.draw)

    def deterministic(self, b, node, attrs, dt) -> str:
        samples = self._samples(node)
        last = samples == 1 and dt.draw == TensorProto.INT64
        best = b.op("ArgMax", [node.input[0]], "argmax", axis=1, keepdims=1,
                    output=node.output[0] if last else None)
        if samples > 1:
            reps = b.constant(np.array([1, samples], dtype=np.int64), "repeats")
            best = b.op("Tile", [best, reps], "tile",
                        output=node.output[0] if dt.draw == TensorProto.INT64 else None)
        if dt.draw != TensorProto.INT64:
            b.op("Cast", [best], "cast", output=node.output[0], to=dt.draw)
        return "the most probable class, ArgMax of the logits"

    def forward(self, noise, attrs, inputs) -> dict:
        with np.errstate(divide="ignore"):
            g = -np.log(-np.log(noise))
        return {0: np.argmax(inputs[0][:, None, :] + g, axis=2)}

    def standardize(self, outputs, attrs, inputs, noise_dtype) -> np.ndarray:
        logits = inputs[0].astype(np.float64)
        picks = outputs[0].astype(np.int64)
        batch, samples = picks.shape
        classes = logits.shape[1]
        if batch and (picks.min() < 0 or picks.max() >= classes):
            raise Inconsistent("a Multinomial sample lies outside its class range")
        dt = np.dtype(noise_dtype)
        tiny = np.finfo(dt).smallest_subnormal if dt.itemsize < 8 else 1e-300
        low_u = np.asarray(max(tiny, 1e-30), dtype=dt)
        with np.errstate(divide="ignore"):
            g_low = float(-np.log(-np.log(low_u.astype(np.float64))))
        u = np.full((batch, samples, classes), low_u, dtype=dt)
        rows = np.arange(batch)[:, None]
        target_logit = logits[rows, picks]  # [batch, samples]
        masked = logits.copy()[:, None, :].repeat(samples, axis=1)
        masked[rows, np.arange(samples)[None, :], picks] = -np.inf
        rival = masked.max(axis=2) + g_low
        # the picked class needs a Gumbel value clearly above every rival's score
        need = np.maximum(rival - target_logit + 1.0, g_low + 1.0)
        u_pick = np.exp(-np.exp(-need)).astype(dt)
        u_pick = np.minimum(u_pick, np.nextafter(dt.type(1), dt.type(0)))
        u[rows, np.arange(samples)[None, :], picks] = u_pick
        if not np.array_equal(self.forward(u, attrs, {0: inputs[0]})[0], picks):
            raise Inconsistent("a Multinomial sample is too improbable to reproduce in "
                               f"{dt.name} Gumbel noise")
        return u


class DropoutOp(RandomOp):
    """Training-mode Dropout: mask = (u >= ratio), output = data * mask / (1 - ratio)."""

    op_type = "Dropout"

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
        data = input_type(node.input[0])
        if not data:
            raise ModelError(f"{_label(node)}: cannot tell the element type of its input")
        _require_float(node, data, "input type")
        ratio = input_type(node.input[1]) if len(node.input) > 1 and node.input[1] else None
        return Dtypes(data, wide_noise(ratio or data), ratio or data)

    def capture_inputs(self, node) -> list[str]:
        return [i for i in node.input[:2] if i]

    def distribution(self, attrs: dict) -> dict:
        return {"family": UNIFORM, "noise": "standard uniform U[0, 1)",
                "transform": "mask = u >= ratio; output = data * mask / (1 - ratio)"}

    def transform_text(self, attrs: dict) -> str:
        return "data * (noise >= ratio) / (1 - ratio)"

    def _ratio(self, b: NodeBuilder, node, attrs, dt: Dtypes) -> str:
        if len(node.input) > 1 and node.input[1]:
            return _widened(b, node.input[1], dt, "ratio_wide")
        default = float(attrs.get("ratio", 0.5))
        return b.constant(np.array(default, dtype=np_dtype(dt.noise)), "ratio")

    def transform(self, b, noise, node, attrs, dt) -> None:
        ratio = self._ratio(b, node, attrs, dt)
        mask_name = node.output[1] if len(node.output) > 1 and node.output[1] else None
        # training_mode fed at run time: keep the data (and an all-true mask) when it is false.
        gated = len(node.input) > 2 and node.input[2] and b.constant_of(node.input[2]) is None
        # the mask is bool from Dropout-10 on; Dropout-1/6 (is_test=0) give it the data's type
        bool_mask = b.opset >= 10
        if b.opset >= 12:
            keep = b.op("GreaterOrEqual", [noise, ratio], "keep",
                        output=None if gated else mask_name)
        else:
            below = b.op("Less", [noise, ratio], "below")
            keep = b.op("Not", [below], "keep", output=mask_name if bool_mask else None)
        if gated and mask_name:
            idle = b.op("Not", [node.input[2]], "not_training")
            b.op("Or", [keep, idle], "mask", output=mask_name)
        one = b.constant(np.array(1.0, dtype=np_dtype(dt.noise)), "one")
        keep_prob = b.op("Sub", [one, ratio], "keep_prob")
        scale = b.op("Reciprocal", [keep_prob], "scale")
        if dt.noise != dt.draw:
            scale = b.op("Cast", [scale], "scale_cast", to=dt.draw)
        scaled = b.op("Mul", [node.input[0], scale], "scaled")
        keep_f = b.op("Cast", [keep], "keep_cast", to=dt.draw,
                      output=None if bool_mask else mask_name)
        dropped = b.op("Mul", [scaled, keep_f], "dropped",
                       output=None if gated else node.output[0])
        if gated:
            b.op("Where", [node.input[2], dropped, node.input[0]], "train_or_not",
                 output=node.output[0])

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


_CASTABLE = {
    TensorProto.FLOAT16, TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.BFLOAT16,
    TensorProto.UINT8, TensorProto.UINT16, TensorProto.UINT32, TensorProto.UINT64,
    TensorProto.INT8, TensorProto.INT16, TensorProto.INT32, TensorProto.INT64, TensorProto.BOOL,
}


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
        # np.array, not the numpy scalar np.abs returns for 0-d input: it is assigned below
        d = np.array(np.abs(got.astype(np.float64) - target.astype(np.float64)))
    both_nan = np.isnan(got) & np.isnan(target)
    d[both_nan] = 0.0
    d[np.isnan(d)] = np.inf
    return d


OP_TABLE: dict[str, RandomOp] = {
    "RandomNormal": AffineOp("RandomNormal", NORMAL, like_input=False),
    "RandomNormalLike": AffineOp("RandomNormalLike", NORMAL, like_input=True),
    "RandomUniform": AffineOp("RandomUniform", UNIFORM, like_input=False),
    "RandomUniformLike": AffineOp("RandomUniformLike", UNIFORM, like_input=True),
    "Bernoulli": BernoulliOp(),
    "Multinomial": MultinomialOp(),
    "Dropout": DropoutOp(),
}

_DEFAULT_DOMAINS = ("", "ai.onnx")


def is_random_op(node: onnx.NodeProto) -> bool:
    """The node's op type is one of the table's (Dropout may still be in inference mode)."""
    return node.domain in _DEFAULT_DOMAINS and node.op_type in OP_TABLE


def spec_for(node: onnx.NodeProto) -> RandomOp:
    return OP_TABLE[node.op_type]
