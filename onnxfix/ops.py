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
from onnx import TensorProto, helper, numpy_helper

from onnxfix.errors import ModelError
from onnxfix.graph.builder import NodeBuilder
from onnxfix.sampler import NORMAL, UNIFORM, below_one, standard_noise

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

    Its comparison (Bernoulli, Dropout) or inverse CDF (Multinomial) then runs in at least
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

    def shape_facts(self, node: onnx.NodeProto, shape_of) -> dict:
        """Static facts the transform needs beyond the attributes (merged into them)."""
        return {}

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
                "transform": "Ceil(Clip(p, 0, 1) - u): 1 where u < p (1 with probability p)"}

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
        return "Ceil(Clip(p, 0, 1) - noise)"

    def transform(self, b, noise, node, attrs, dt) -> None:
        """Ceil(Clip(p, 0, 1) - u): 1 where u < p, 0 where u >= p (the difference lies in
        (-1, 1]).

        No compare and no Cast unless the draw's dtype asks for one: ncnn has neither, and
        every runtime has Sub and Ceil. Ceil of (-1, 0) is -0.0: Abs makes a float draw's
        zeros +0.0, bit for bit what Cast(u < p) gave.
        """
        p = _widened(b, node.input[0], dt, "p_wide")
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


class MultinomialOp(RandomOp):
    """Inverse CDF: one uniform u per sample, noise [batch, sample_size].

    sample = the first k with cdf_k > u (= #{k : cdf_k <= u}), cdf = cumsum(softmax(
    logits)) / total in float32 (double for double logits). total is the largest
    cumulative value, so some class always lies above u: the sample is at most classes - 1
    whatever the rounding, and a class of probability 0 is never drawn (its interval
    [cdf_k-1, cdf_k) is empty).
    """

    op_type = "Multinomial"
    # relative margin (in units of the noise dtype's epsilon) a captured sample's u keeps
    # from its interval's ends, so onnxruntime's Exp (not numpy's) still maps it back
    SAFE_ULPS = 8

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
                f"[0, 1), so the inverse-CDF sample cannot tell classes apart whose "
                f"probabilities are below {1 - float(below_one(np_dtype(fed))):.2g}; use "
                f"noise_dtype=\"float32\" or \"same\"")

    def noise_shape(self, node, shape_of) -> list | None:
        logits = shape_of(node.input[0])
        batch = logits[0] if logits is not None and len(logits) == 2 else None
        return [batch, self._samples(node)]

    def shape_facts(self, node, shape_of) -> dict:
        logits = shape_of(node.input[0])
        if logits is not None and len(logits) == 2 and isinstance(logits[1], int):
            return {CLASSES: logits[1]}
        return {}

    @staticmethod
    def _samples(node) -> int:
        n = int(attrs_of(node).get("sample_size", 1))
        if n < 1:
            raise ModelError(f"{_label(node)}: sample_size {n} must be at least 1")
        return n

    def distribution(self, attrs: dict) -> dict:
        return {"family": UNIFORM, "noise": "standard uniform U[0, 1) [batch, sample_size]",
                "sample_size": int(attrs.get("sample_size", 1)),
                "transform": "inverse CDF: count of cumsum(softmax(logits)) <= u"}

    def transform_text(self, attrs: dict) -> str:
        return "count of cumsum(softmax(logits)) <= noise (inverse CDF)"

    def transform(self, b, noise, node, attrs, dt) -> None:
        logits = _widened(b, node.input[0], dt, "logits_wide")
        # Softmax, not ReduceMax + Exp: onnx2torch has no ReduceMax with axes as an input
        probs = b.op("Softmax", [logits], "probs", axis=1)  # 2-D: one meaning at every opset
        cdf, total = _cumulative(b, probs, node, attrs, dt)
        cdf = b.op("Div", [cdf, total], "cdf")  # in [0, 1]; the largest is exactly 1
        # [batch, 1, classes] - [batch, samples, 1]: Ceil is 1 where cdf > u, else 0
        diff = b.op("Sub", [b.unsqueeze(cdf, 1, "cdf_3d"), b.unsqueeze(noise, 2, "u_3d")],
                    "cdf_minus_u")
        above = b.op("Ceil", [diff], "above")
        # the first class whose cdf is above u (the last always is): ArgMax gives int64
        # itself (tract types a Cast to int64 as a shape value it cannot return)
        last = dt.draw == TensorProto.INT64
        pick = b.op("ArgMax", [above], "first_above", axis=2, keepdims=0,
                    output=node.output[0] if last else None)
        if not last:
            b.op("Cast", [pick], "cast", output=node.output[0], to=dt.draw)

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

    @staticmethod
    def cdf(logits: np.ndarray, dtype) -> np.ndarray:
        """The normalized cumulative probabilities, computed by onnxruntime's own kernels.

        numpy cannot stand in: its Softmax differs from onnxruntime's by an ulp here and
        there, and a sequential sum over 50k classes carries each difference on, so the
        cumulative values drift apart by ~1e-5 - half a class of a 50k vocabulary. (Even
        onnxruntime rounds an ulp apart from one graph to another: the check conditions on
        the rewritten model's own cdf where it can, and keeps a margin here.)
        """
        from onnxfix.check.compare import make_session

        elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
        ints = {n: numpy_helper.from_array(np.array(v, np.int64), n)
                for n, v in (("axis", 1), ("last", [-1]), ("end", [2**62]), ("axes", [1]))}
        graph = helper.make_graph([
            helper.make_node("Softmax", ["x"], ["p"], axis=1),
            helper.make_node("CumSum", ["p", "axis"], ["c"]),
            helper.make_node("Slice", ["c", "last", "end", "axes"], ["t"]),
            helper.make_node("Div", ["c", "t"], ["cdf"])], "cdf",
            [helper.make_tensor_value_info("x", elem, [None, None])],
            [helper.make_tensor_value_info("cdf", elem, [None, None])],
            initializer=list(ints.values()))
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                  ir_version=8)
        sess = make_session(model)  # configured as the check's sessions: rounding matches
        return sess.run(None, {"x": np.ascontiguousarray(logits, dtype=dtype)})[0]

    def forward(self, noise, attrs, inputs) -> dict:
        return {0: _first_above(self.cdf(inputs[0], noise.dtype), noise)}

    def standardize(self, outputs, attrs, inputs, noise_dtype) -> np.ndarray:
        return self.noise_for(outputs[0], self.cdf(inputs[0], noise_dtype), noise_dtype)

    @staticmethod
    def cdf_tensor(nodes, noise: str) -> str | None:
        """The normalized-cdf tensor the transform reading `noise` compares it with."""
        made = {o: n for n in nodes for o in n.output}
        for n in nodes:
            if n.op_type == "Sub" and len(n.input) == 2 and n.input[1] in made:
                u3 = made[n.input[1]]
                cdf3 = made.get(n.input[0])
                reads_noise = u3.op_type == "Unsqueeze" and (
                    u3.input[0] == noise or (u3.input[0] in made and
                                             made[u3.input[0]].input[:1] == [noise]))
                if reads_noise and cdf3 is not None and cdf3.op_type == "Unsqueeze":
                    return cdf3.input[0]
        return None

    def noise_for(self, picks: np.ndarray, cdf: np.ndarray, noise_dtype,
                  safe_ulps: int | None = None) -> np.ndarray:
        """The middle of each sample's interval [cdf_k-1, cdf_k), kept only where it lies
        clearly inside (safe_ulps: margin for kernels that may round differently; 0 for the
        cdf of the very session that then runs the model)."""
        dt = np.dtype(noise_dtype)
        picks = picks.astype(np.int64)
        cdf = cdf.astype(np.float64)
        classes = cdf.shape[1]
        if picks.size and (picks.min() < 0 or picks.max() >= classes):
            raise Inconsistent("a Multinomial sample lies outside its class range")
        rows = np.arange(picks.shape[0])[:, None]
        hi = cdf[rows, picks]
        lo = np.where(picks > 0, cdf[rows, np.maximum(picks - 1, 0)], 0.0)
        u = ((lo + hi) / 2).astype(dt)
        ulps = self.SAFE_ULPS if safe_ulps is None else safe_ulps
        margin = ulps * float(np.finfo(dt).eps) * hi
        wide = u.astype(np.float64)
        chosen = _first_above(cdf, wide)
        if ((wide - lo < margin) | (hi - wide < margin)).any() or \
                not np.array_equal(chosen, picks):
            raise Inconsistent("a Multinomial sample is too improbable to reproduce in "
                               f"{dt.name} inverse-CDF noise")
        return u


def _first_above(cdf: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Per row, the first class whose cdf exceeds u (ArgMax of Ceil(cdf - u)), row by row:
    a [batch, samples, classes] table could take gigabytes."""
    rows = np.maximum.accumulate(cdf, axis=1)  # the first exceedance is the envelope's
    return np.stack([np.searchsorted(r, w, side="right") for r, w in
                     zip(rows, u, strict=True)]).reshape(u.shape)


CLASSES = "onnxfix_classes"  # shape_facts key: the static class count of a Multinomial
SMALL_CLASSES = 128  # up to here the cumulative sum is one MatMul by a triangle (64 KB)


def _last(b: NodeBuilder, cum: str) -> tuple[str, str]:
    """cum and its last column (opset 11 and later: Slice takes its bounds as inputs)."""
    ends = [b.constant(np.array([v], dtype=np.int64), hint)
            for v, hint in ((-1, "last"), (2**62, "end"), (1, "class_axis"))]
    return cum, b.op("Slice", [cum, *ends], "total")


def _cumulative(b: NodeBuilder, probs: str, node, attrs: dict, dt: Dtypes) -> tuple[str, str]:
    """Cumulative sums of [batch, classes] probabilities along the classes, and their total.

    Up to SMALL_CLASSES static classes, at any opset: MatMul by a triangle of ones (below).
    Else from opset 11: CumSum (reverse=0 spelled out: onnx2torch defaults it to 1), sequential in
    every runtime seen, so its last value is the largest. Before opset 11, a two-level prefix
    sum by MatMul with triangular ones matrices of ceil(sqrt(C)) and C / ceil(sqrt(C)) sides:
    memory O(C), not the C x C of one triangle; its sums may round out of order, so the total
    is their ReduceMax (no class then lies above it). The padding (weight 0) repeats the total,
    which never counts as at or below u.
    """
    classes = attrs.get(CLASSES)
    npt = np_dtype(dt.noise)
    if classes is not None and classes <= SMALL_CLASSES:
        # one MatMul by the upper-triangular ones, at any opset: ncnn (through pnnx) has no
        # CumSum and no Pad; onnxruntime sums it in order, bit-equal to CumSum (float32 and
        # float64) up to 128 classes, and the last value is the largest
        upper = b.constant(np.triu(np.ones((classes, classes), npt)), "upper")
        cum = b.op("MatMul", [probs, upper], "cumsum")
        return _last(b, cum) if b.opset >= 11 else (cum, b.reduce("ReduceMax", cum, 1, "total"))
    if b.opset >= 11:
        axis = b.constant(np.array(1, dtype=np.int64), "axis")
        return _last(b, b.op("CumSum", [probs, axis], "cumsum", exclusive=0, reverse=0))
    if classes is None:
        raise ModelError(f"{_label(node)}: opset {b.opset} has no CumSum and the class count "
                         f"of input '{node.input[0]}' is not static: fix it (dims=... / --dim) "
                         f"or convert the model to opset 11")
    side = max(1, math.isqrt(classes - 1) + 1) if classes > 1 else 1
    blocks = -(-classes // side)
    padded = probs
    if blocks * side > classes:
        padded = b.op("Pad", [probs], "pad", pads=[0, 0, 0, blocks * side - classes])
    grid = b.op("Reshape", [padded, b.constant(np.array([-1, blocks, side], np.int64),
                                               "grid_shape")], "grid")
    inclusive = b.constant(np.triu(np.ones((side, side), npt)), "upper")
    within = b.op("MatMul", [grid, inclusive], "within")
    totals = b.reduce("ReduceSum", grid, 2, "block_totals", keepdims=0)
    strict = b.constant(np.triu(np.ones((blocks, blocks), npt), 1), "strict_upper")
    before = b.unsqueeze(b.op("MatMul", [totals, strict], "before"), 2, "before_3d")
    cum = b.op("Add", [within, before], "cum_grid")
    cum = b.op("Reshape", [cum, b.constant(np.array([-1, blocks * side], np.int64),
                                           "cum_shape")], "cumsum")
    return cum, b.reduce("ReduceMax", cum, 1, "total")


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
                "transform": "keep = 1 - Ceil(ratio - u) (1 where u >= ratio); output = "
                             "data * keep / (1 - ratio)"}

    def transform_text(self, attrs: dict) -> str:
        return "data * (1 - Ceil(ratio - noise)) / (1 - ratio)"

    def _ratio(self, b: NodeBuilder, node, attrs, dt: Dtypes) -> str:
        if len(node.input) > 1 and node.input[1]:
            return _widened(b, node.input[1], dt, "ratio_wide")
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
