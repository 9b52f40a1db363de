"""Multinomial: one uniform per sample, mapped to a class by the inverse CDF."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from onnxfix.errors import ModelError, one_line
from onnxfix.ops.base import (
    INDEX_TYPES,
    Dtypes,
    Improbable,
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
    with_attr,
)
from onnxfix.ops.noise import UNIFORM
from onnxfix.stats import ChiSquare, goodness_of_fit, homogeneity, merge_cells

if TYPE_CHECKING:  # the builder is only handed in: importing it would close a cycle
    from onnxfix.graph.builder import NodeBuilder


class MultinomialOp(RandomOp):
    """Inverse CDF: one uniform u per sample, noise [batch, sample_size].

    sample = the first k with cdf_k > u (= #{k : cdf_k <= u}), cdf = cumsum(softmax(
    logits)) / total in float32 (double for double logits). total is the largest
    cumulative value, so some class always lies above u: the sample is at most classes - 1
    whatever the rounding, and a class of probability 0 is never drawn (its interval
    [cdf_k-1, cdf_k) is empty).
    """

    op_type = "Multinomial"
    deterministic_noise = None  # no u is the most probable class for every logit row
    noise_is_draw_shaped = False  # noise [batch, sample_size], logits [batch, classes]
    # relative margin (in units of the noise dtype's epsilon) a captured sample's u keeps
    # from its interval's ends, so onnxruntime's Exp (not numpy's) still maps it back
    SAFE_ULPS = 8

    def dtypes(self, node, input_type) -> Dtypes:
        in_type = float_input_type(node, input_type)
        draw = int(attrs_of(node).get("dtype", TensorProto.INT32))
        if draw not in INDEX_TYPES:
            raise ModelError(f"{label(node)}: dtype {dtype_name(draw)} is not allowed "
                             f"(the op takes int32 or int64)")
        return Dtypes(draw, wide_noise(in_type), in_type)

    def noise_dtype_problem(self, node, fed: int) -> str:
        return narrow_uniform_problem(node, fed, lambda name, step: (
            f"{name} has only {_units_below_one(fed):,} distinct values in [0, 1), so the "
            f"inverse-CDF sample cannot tell classes apart whose probabilities are below "
            f"{step:.2g}"))

    def noise_shape(self, node, shape_of) -> list | None:
        logits = shape_of(node.input[0])
        batch = logits[0] if logits is not None and len(logits) == 2 else None
        return [batch, self._samples(node)]

    def noise_dims(self, batch: int, samples: int, classes: int) -> list[int]:
        """The noise shape of `samples` draws from each of `batch` rows of `classes` logits."""
        return [batch, samples]

    def draw_axis(self, k: int) -> int | None:
        return k if k < 2 else None

    def source_axes(self, rank: int) -> list[int | None]:
        """The sample count (an attribute) follows the batch axis of the logits."""
        return [0, None, 1][:rank]

    def shape_facts(self, node, shape_of) -> dict:
        logits = shape_of(node.input[0])
        if logits is not None and len(logits) == 2 and isinstance(logits[1], int):
            return {CLASSES: logits[1]}
        return {}

    @staticmethod
    def _samples(node) -> int:
        n = int(attrs_of(node).get("sample_size", 1))
        if n < 1:
            raise ModelError(f"{label(node)}: sample_size {n} must be at least 1")
        return n

    def distribution(self, attrs: dict) -> dict:
        return {"family": UNIFORM, "noise": "standard uniform U[0, 1) [batch, sample_size]",
                "sample_size": int(attrs.get("sample_size", 1)),
                "transform": "inverse CDF: count of cumsum(softmax(logits)) <= u"}

    def transform_text(self, attrs: dict) -> str:
        return "count of cumsum(softmax(logits)) <= noise (inverse CDF)"

    def transform(self, b, noise, node, attrs, dt) -> None:
        logits = widened(b, node.input[0], dt, "logits_wide")
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
        from onnxfix.check.compare import make_session  # noqa: PLC0415 - onnxruntime, lazily

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

    def standardize_stacked(self, outputs, attrs, inputs, noise_dtype, lead) -> np.ndarray:
        """Loop axes folded into the batch: the cdf is computed per row of logits."""
        if not lead:
            return self.standardize(outputs, attrs, inputs, noise_dtype)
        picks, logits = outputs[0], inputs[0]
        u = self.standardize({0: picks.reshape(-1, picks.shape[-1])}, attrs,
                             {0: logits.reshape(-1, logits.shape[-1])}, noise_dtype)
        return u.reshape(*picks.shape[:lead], picks.shape[lead], *u.shape[1:])

    def own_reference(self, nodes, noise: str) -> str | None:
        """The rewritten model's normalized cdf: an ulp of difference in it moves class
        boundaries, so the check re-standardizes against the very values it compares with."""
        return self.cdf_tensor(nodes, noise)

    def recondition(self, outputs, reference, noise_dtype) -> np.ndarray:
        return self.noise_for(outputs[0], reference, noise_dtype, safe_ulps=0)

    def provisional(self, outputs, noise_dtype) -> np.ndarray:
        return np.full(np.shape(outputs[0]), 0.5, dtype=noise_dtype)  # noise is [batch, samples]

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
            raise Improbable("a Multinomial sample is too improbable to reproduce in "
                               f"{dt.name} inverse-CDF noise")
        return u

    def distribution_test(self, h):
        logits = h.draw.inputs[0]
        classes = logits.shape[-1]
        # a huge vocabulary tests fewer rows: at least 50 samples per row within the budget
        rows = logits[:int(np.clip(h.multinomial_noise // (50 * max(classes, 1)), 1,
                                   h.multinomial_rows))]
        with np.errstate(invalid="ignore"):
            usable = ~np.isnan(rows).any(axis=1) & ~np.isposinf(rows).any(axis=1) & \
                np.isfinite(rows.max(axis=1, initial=-np.inf))
        rows = rows[usable]
        if not rows.size:
            return [], ["no row of finite logits to test"]
        samples = int(np.clip(h.multinomial_noise // rows.size, 50, 4000))
        ours = _dist_counts(h, rows, samples, self.noise_dims)
        probs = _softmax(rows.astype(np.float64))
        total = samples * rows.shape[0]
        # cells by probability rank catch a bias by class weight; cells in class order catch a
        # positional one (an inverse CDF on skewed noise favours low class ids)
        results = [(against, _fit_ideal(ours, probs, samples, order), total)
                   for against, order in (("ideal", _by_probability),
                                          ("ideal, class order", _by_class))]
        probe = with_attr(h.node, "sample_size", samples)
        try:
            picks = h.original(probe, {h.node.input[0]: rows}, h.node.output[0])
        except Exception as e:  # noqa: BLE001
            return results, [f"onnxruntime cannot run the original for a two-sample test: "
                             f"{one_line(e, 200)}"]
        theirs = _class_counts(picks, rows.shape[1])
        two = ChiSquare(0.0, 0)
        for a, t, p in zip(ours, theirs, probs, strict=True):
            order = _by_probability(p)
            cell = merge_cells(p[order], samples)
            two = two + homogeneity(_binned(a, p, cell, order)[0], _binned(t, p, cell, order)[0])
        return [*results, ("original", two, total)], []

def _first_above(cdf: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Per row, the first class whose cdf exceeds u (ArgMax of Ceil(cdf - u)), row by row:
    a [batch, samples, classes] table could take gigabytes."""
    rows = np.maximum.accumulate(cdf, axis=1)  # the first exceedance is the envelope's
    return np.stack([np.searchsorted(r, w, side="right") for r, w in
                     zip(rows, u, strict=True)]).reshape(u.shape)


CLASSES = "onnxfix_classes"  # shape_facts key: the static class count of a Multinomial


SMALL_CLASSES = 128  # up to here the cumulative sum is one MatMul by a triangle (64 KB)


def _last(b: NodeBuilder, cum: str, classes: int | None) -> tuple[str, str]:
    """cum and its last column [batch, 1] (opset 11 and later), by Gather: onnx2tf sliced
    the wrong axis of the equivalent Slice where inference left the rank unknown. The index
    counts from the front where the class count is static (negative indices are read from
    opset 11 on, not by every converter)."""
    last = b.constant(np.array([-1 if classes is None else classes - 1], np.int64), "last")
    return cum, b.op("Gather", [cum, last], "total", axis=1)


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
        if b.opset >= 11:
            return _last(b, cum, classes)
        return cum, b.reduce("ReduceMax", cum, 1, "total")
    if b.opset >= 11:
        axis = b.constant(np.array(1, dtype=np.int64), "axis")
        return _last(b, b.op("CumSum", [probs, axis], "cumsum", exclusive=0, reverse=0), classes)
    classes = attrs.get(CLASSES)
    if classes is None:
        raise ModelError(f"{label(node)}: opset {b.opset} has no CumSum and the class count "
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


def _units_below_one(elem_type: int) -> int:
    """How many distinct values a float type has in [0, 1) (zero, subnormals, normals)."""
    bits, exp_bits = {TensorProto.FLOAT16: (10, 5), TensorProto.BFLOAT16: (7, 8)}[elem_type]
    negative_exponents = 2 ** (exp_bits - 1) - 2  # binades [2^-k, 2^-k+1), k = 1 .. bias-1
    return (negative_exponents + 1) * 2**bits


# -- the distribution test's counting ---------------------------------------------------

def _dist_counts(h, rows: np.ndarray, samples: int, noise_dims) -> np.ndarray:
    """Per row, how often the rewritten transform picked each class in `samples` draws
    (noise_dims(rows, samples, classes): the noise shape of the form under test)."""
    name, out = h.node.input[0], h.node.output[0]
    chunk = max(1, h.chunk_noise // rows.size)
    ours = np.zeros(rows.shape, dtype=np.int64)
    for start in range(0, samples, chunk):
        n = min(chunk, samples - start)
        shape = noise_dims(rows.shape[0], n, rows.shape[1])
        picks = h.transform(h.noise(shape), {name: rows}, h.node, out)
        ours += _class_counts(picks, rows.shape[1])
    return ours


def _by_probability(p: np.ndarray) -> np.ndarray:
    return np.argsort(-p, kind="stable")


def _by_class(p: np.ndarray) -> np.ndarray:
    return np.arange(p.size)


def _fit_ideal(ours: np.ndarray, probs: np.ndarray, samples: int, order_of) -> ChiSquare:
    fit = ChiSquare(0.0, 0)
    for c, p in zip(ours, probs, strict=True):
        order = order_of(p)
        fit = fit + goodness_of_fit(*_binned(c, p, merge_cells(p[order], samples), order))
    return fit


def _class_counts(picks: np.ndarray, classes: int) -> np.ndarray:
    picks = picks.astype(np.int64)
    if picks.size and (picks.min() < 0 or picks.max() >= classes):
        return np.full((picks.shape[0], classes), -1, dtype=np.int64)  # cannot fit anything
    return np.stack([np.bincount(row, minlength=classes) for row in picks])


def _binned(counts: np.ndarray, probs: np.ndarray, cells: np.ndarray, order: np.ndarray):
    k = int(cells.max()) + 1
    return (np.bincount(cells, weights=counts[order], minlength=k),
            np.bincount(cells, weights=probs[order], minlength=k))


def _softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


# The registry (ops/__init__) collects every module's OPS, ordered by RANK.
RANK = 2
OPS = (MultinomialOp(),)
