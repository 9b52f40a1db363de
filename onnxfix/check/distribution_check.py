"""The distribution test: each rewritten transform must sample its node's own distribution.

Conditional parity feeds every transform noise constructed from the original's draw, so it
proves the wiring but cannot see a transform that samples the wrong distribution (float16
Gumbel noise that ties, a compare the wrong way round). So every draw whose transform is not
the identity on its noise (Bernoulli, Multinomial, Dropout, and any noise fed narrower than it
is used) gets a small model holding just that transform, built by the same op class that wrote
it into the rewritten model, fed the inputs the original gave the node in the check and many
seeded samples of standard noise from the shared sampler. Its outcomes are compared with
- the node's exact distribution: p for Bernoulli, softmax(logits) for Multinomial, 1 - ratio
  kept for Dropout, N(mean, scale) or U(low, high) in equal-probability bins;
- the original node's own draws in onnxruntime where it runs them (a two-sample test). Not
  for Bernoulli: onnxruntime follows the op's function body, 1 with probability 1 - p.
Statistics and thresholds are in `stats`; the seed is fixed, so a verdict repeats.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import onnx
from onnx import helper

from onnxfix.check.compare import make_session, run_all
from onnxfix.check.stats import ChiSquare, bernoulli_fit, goodness_of_fit, homogeneity, merge_cells
from onnxfix.errors import one_line
from onnxfix.graph.builder import NodeBuilder
from onnxfix.graph.naming import NameAllocator
from onnxfix.ops import (
    NORMAL,
    OP_TABLE,
    AffineOp,
    BernoulliOp,
    DropoutOp,
    MultinomialOp,
    RandomOp,
    attrs_of,
    np_dtype,
    spec_for,
)
from onnxfix.ops.noise import standard_noise
from onnxfix.report import DistributionCheck

TRIALS = 200_000  # Bernoulli / Dropout: element draws per test
MAX_ELEMENTS = 65_536  # of p or of the dropout data, the first ones are tested
MULTINOMIAL_NOISE = 16_000_000  # sample x class comparisons per Multinomial test, over all runs
CHUNK_NOISE = 2_000_000  # sample x class comparisons per run (memory)
MULTINOMIAL_ROWS = 4
AFFINE_SAMPLES = 20_000
AFFINE_BINS = 20
_WIDTH = {onnx.TensorProto.FLOAT16: 2, onnx.TensorProto.BFLOAT16: 2,
          onnx.TensorProto.FLOAT: 4, onnx.TensorProto.DOUBLE: 8}


@dataclass
class DrawUnderTest:
    node: onnx.NodeProto  # the original random node
    inputs: dict[int, np.ndarray]  # its captured inputs for one invocation
    fed: int  # elem type of the noise input
    natural: int  # elem type the noise is cast to in-graph (= fed without --noise-dtype)
    spec: RandomOp | None = None  # the op class that wrote the transform (None: the default)

    def __post_init__(self):
        if self.spec is None:
            self.spec = spec_for(self.node)


@dataclass
class _Context:
    draw: DrawUnderTest
    opset: int
    ir_version: int
    rng: np.random.Generator
    seed: int

    @property
    def node(self) -> onnx.NodeProto:
        return self.draw.node

    @property
    def spec(self) -> RandomOp:
        return self.draw.spec


def needs_test(op_type: str, fed: int, natural: int) -> bool:
    """Discrete transforms, and any noise fed narrower than its in-graph dtype."""
    return OP_TABLE[op_type].discrete or _WIDTH.get(fed, 4) < _WIDTH.get(natural, 4)


def test_draw(draw: DrawUnderTest, opset: int, ir_version: int, seed: int) -> tuple[
        list[DistributionCheck], list[str]]:
    """The draw's tests, and notes on what was not tested."""
    key = zlib.crc32(draw.node.output[0].encode())
    ctx = _Context(draw, opset, ir_version, np.random.default_rng([seed, key]), seed)
    runner = next(_RUNNERS[cls] for cls in type(draw.spec).__mro__ if cls in _RUNNERS)
    results, notes = runner(ctx)
    checks = [DistributionCheck(draw.node.output[0], draw.node.op_type, against,
                                chi.statistic, chi.threshold, chi.df, samples, chi.passed)
              for against, chi, samples in results]
    return checks, notes


# -- the small models ------------------------------------------------------------------

def _transform_outcome(ctx: _Context, noise: np.ndarray, arrays: dict[str, np.ndarray],
                       node: onnx.NodeProto, output: str) -> np.ndarray:
    """Run the rewritten transform of `node` on `noise` (fed dtype) and the node's inputs."""
    spec = ctx.spec
    elem = {n: helper.np_dtype_to_tensor_dtype(a.dtype) for n, a in arrays.items()}
    dtypes = spec.dtypes(node, lambda name: elem.get(name, ctx.draw.natural))
    shell = helper.make_model(helper.make_graph([node], "shell", [], []))
    names = NameAllocator(shell)
    b = NodeBuilder(names, ctx.opset, "onnxfix_dist")
    fed = names.fresh("onnxfix_dist_noise")
    inner = fed
    if ctx.draw.fed != dtypes.noise:
        inner = b.op("Cast", [fed], "noise_cast", to=dtypes.noise)
    def shape_of(name: str) -> list | None:
        return list(arrays[name].shape) if name in arrays else None

    spec.transform(b, inner, node, {**attrs_of(node), **spec.shape_facts(node, shape_of)},
                   dtypes)
    return _run(ctx, b.nodes, {fed: noise, **arrays}, output)


def _original_outcome(ctx: _Context, node: onnx.NodeProto, arrays: dict[str, np.ndarray],
                      output: str) -> np.ndarray:
    """Run the original node in onnxruntime, seeded."""
    seeded = onnx.NodeProto()
    seeded.CopyFrom(node)
    _set_attr(seeded, "seed", spec_for(node).seed_attribute(ctx.seed % 2**24))
    return _run(ctx, [seeded], arrays, output)


def _run(ctx: _Context, nodes, arrays: dict[str, np.ndarray], output: str) -> np.ndarray:
    read = {i for n in nodes for i in n.input if i}
    made = {o for n in nodes for o in n.output if o}
    inputs = [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(a.dtype),
                                            list(a.shape))
              for name, a in arrays.items() if name in read - made]
    graph = helper.make_graph(nodes, "distribution_test", inputs,
                              [helper.make_empty_tensor_value_info(output)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ctx.opset)],
                              ir_version=ctx.ir_version)
    sess = make_session(model)
    feeds = {i.name: arrays[i.name] for i in inputs}
    return run_all(sess, feeds)[output]


def _set_attr(node: onnx.NodeProto, name: str, value) -> None:
    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend([*kept, helper.make_attribute(name, value)])


def _noise(ctx: _Context, shape) -> np.ndarray:
    return standard_noise(ctx.rng, ctx.spec.family, shape, np_dtype(ctx.draw.fed))


# -- per op -----------------------------------------------------------------------------

def _bernoulli(ctx: _Context):
    p = ctx.draw.inputs[0].reshape(-1)[:MAX_ELEMENTS]
    p = p[np.isfinite(p) & (p >= 0) & (p <= 1)]
    if not p.size:
        return [], ["no probability in [0, 1] to test"]
    trials = max(1, TRIALS // p.size)
    y = _transform_outcome(ctx, _noise(ctx, [trials, p.size]), {ctx.node.input[0]: p},
                           ctx.node, ctx.node.output[0])
    hits = (y != 0).sum(axis=0)
    chi = bernoulli_fit(hits, p.astype(np.float64), trials)
    return [("ideal", chi, trials * p.size)], [
        "not compared with onnxruntime's own draws: they are 1 with probability 1 - p (the "
        "op's function body), onnxfix's 1 with probability p (the op's text)"]


def _dropout(ctx: _Context):
    node, attrs = ctx.node, attrs_of(ctx.node)
    data = ctx.draw.inputs[0].reshape(-1)[:MAX_ELEMENTS]
    if not data.size:
        return [], ["no data to test"]
    ratio_in = node.input[1] if len(node.input) > 1 and node.input[1] else ""
    ratio = ctx.draw.inputs[1] if ratio_in else np.asarray(attrs.get("ratio", 0.5))
    r = float(np.asarray(ratio, dtype=np.float64).reshape(-1)[0])
    trials = max(1, TRIALS // data.size)
    arrays = {node.input[0]: np.ones(data.size, data.dtype)}
    if ratio_in:
        arrays[ratio_in] = np.asarray(ratio)
    if len(node.input) > 2 and node.input[2]:
        arrays[node.input[2]] = np.asarray(True)
    probe = _with_mask(node)
    keep = _transform_outcome(ctx, _noise(ctx, [trials, data.size]), arrays, probe,
                              probe.output[1])
    ours = np.array([keep.sum(), keep.size - keep.sum()])
    results = [("ideal", goodness_of_fit(ours, [1 - r, r]), keep.size)]
    notes = []
    if ctx.opset >= 12:
        arrays[node.input[0]] = np.ones((trials, data.size), data.dtype)
        try:
            theirs = _original_outcome(ctx, probe, arrays, probe.output[1])
        except Exception as e:  # noqa: BLE001 - onnxruntime may not run it
            notes.append(f"onnxruntime cannot run the original for a two-sample test: "
                         f"{one_line(e, 200)}")
        else:
            counts = np.array([theirs.sum(), theirs.size - theirs.sum()])
            results.append(("original", homogeneity(ours, counts), keep.size))
    return results, notes


def _with_mask(node: onnx.NodeProto) -> onnx.NodeProto:
    probe = onnx.NodeProto()
    probe.CopyFrom(node)
    while len(probe.output) < 2:
        probe.output.append("")
    if not probe.output[1]:
        probe.output[1] = "onnxfix_dist_mask"
    return probe


def _multinomial(ctx: _Context):
    logits = ctx.draw.inputs[0]
    classes = logits.shape[-1]
    # a huge vocabulary tests fewer rows: at least 50 samples per row within the budget
    rows = logits[:int(np.clip(MULTINOMIAL_NOISE // (50 * max(classes, 1)), 1,
                               MULTINOMIAL_ROWS))]
    with np.errstate(invalid="ignore"):
        usable = ~np.isnan(rows).any(axis=1) & ~np.isposinf(rows).any(axis=1) & \
            np.isfinite(rows.max(axis=1, initial=-np.inf))
    rows = rows[usable]
    if not rows.size:
        return [], ["no row of finite logits to test"]
    samples = int(np.clip(MULTINOMIAL_NOISE // rows.size, 50, 4000))
    name, out = ctx.node.input[0], ctx.node.output[0]
    ours = _multinomial_counts(ctx, rows, samples, ctx.spec.noise_dims)
    probs = _softmax(rows.astype(np.float64))
    total = samples * rows.shape[0]
    # cells by probability rank catch a bias by class weight; cells in class order catch a
    # positional one (an inverse CDF on skewed noise favours low class ids)
    results = [(against, _fit_ideal(ours, probs, samples, order), total)
               for against, order in (("ideal", _by_probability),
                                      ("ideal, class order", _by_class))]
    probe = onnx.NodeProto()
    probe.CopyFrom(ctx.node)
    _set_attr(probe, "sample_size", samples)
    try:
        theirs = _class_counts(_original_outcome(ctx, probe, {name: rows}, out), rows.shape[1])
    except Exception as e:  # noqa: BLE001
        return results, [f"onnxruntime cannot run the original for a two-sample test: "
                         f"{one_line(e, 200)}"]
    two = ChiSquare(0.0, 0)
    for a, t, p in zip(ours, theirs, probs, strict=True):
        order = _by_probability(p)
        cell = merge_cells(p[order], samples)
        two = two + homogeneity(_binned(a, p, cell, order)[0], _binned(t, p, cell, order)[0])
    return [*results, ("original", two, total)], []


def _multinomial_counts(ctx: _Context, rows: np.ndarray, samples: int,
                        noise_dims) -> np.ndarray:
    """Per row, how often the rewritten transform picked each class in `samples` draws
    (noise_dims(rows, samples, classes): the noise shape of the form under test)."""
    name, out = ctx.node.input[0], ctx.node.output[0]
    chunk = max(1, CHUNK_NOISE // rows.size)
    ours = np.zeros(rows.shape, dtype=np.int64)
    for start in range(0, samples, chunk):
        n = min(chunk, samples - start)
        shape = noise_dims(rows.shape[0], n, rows.shape[1])
        picks = _transform_outcome(ctx, _noise(ctx, shape), {name: rows}, ctx.node, out)
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


def _affine(ctx: _Context):
    spec = ctx.spec
    attrs = attrs_of(ctx.node)
    offset, factor = spec.offset_factor(attrs)
    if factor <= 0:
        return [], ["a degenerate distribution (zero width)"]
    probe = onnx.NodeProto()
    probe.CopyFrom(ctx.node)
    arrays = {}
    if spec.like_input:
        arrays[probe.input[0]] = np.zeros(AFFINE_SAMPLES, np_dtype(ctx.draw.natural))
    else:
        _set_attr(probe, "shape", [AFFINE_SAMPLES])
    out = probe.output[0]
    draws = _transform_outcome(ctx, _noise(ctx, [AFFINE_SAMPLES]), arrays, probe, out)
    if spec.family == NORMAL:
        dist = NormalDist(offset, factor)
        edges = [dist.inv_cdf(j / AFFINE_BINS) for j in range(1, AFFINE_BINS)]
    else:
        edges = [offset + factor * j / AFFINE_BINS for j in range(1, AFFINE_BINS)]
    ours = _value_counts(draws, edges)
    results = [("ideal", goodness_of_fit(ours, np.full(AFFINE_BINS, 1 / AFFINE_BINS)),
                AFFINE_SAMPLES)]
    try:
        theirs = _value_counts(_original_outcome(ctx, probe, arrays, out), edges)
    except Exception as e:  # noqa: BLE001
        return results, [f"onnxruntime cannot run the original for a two-sample test: "
                         f"{one_line(e, 200)}"]
    return [*results, ("original", homogeneity(ours, theirs), AFFINE_SAMPLES)], []


def _value_counts(values: np.ndarray, edges: list[float]) -> np.ndarray:
    cells = np.searchsorted(np.asarray(edges), values.astype(np.float64).reshape(-1),
                            side="right")
    return np.bincount(cells, minlength=len(edges) + 1)


# Each op class's test (keyed by class: the affine ops share one).
_RUNNERS = {AffineOp: _affine, BernoulliOp: _bernoulli, MultinomialOp: _multinomial,
            DropoutOp: _dropout}


# -- inside the parity check --------------------------------------------------------------

def check_distributions(parity, draws, opset: int, ir_version: int, seed: int, emit) -> bool:
    """Test every draw that needs it; record and print each verdict. False if any failed.

    draws: (node, leading iteration axes, captured inputs by index, its Replacement, the op
    class that wrote its transform), for
    the nodes that ran; inside loops, the first iteration's inputs are used.
    """
    ok = True
    for node, lead, inputs, repl, spec in draws:
        if not wants_test(node.op_type, repl):
            continue
        fed, natural = _noise_types(repl)
        label = f"{node.op_type} '{node.output[0]}'"
        if lead and any(a.shape[:lead] and 0 in a.shape[:lead] for a in inputs.values()):
            emit(f"NOTE | distribution | {label}: not tested, its loop never ran")
            continue
        one = {i: a[(0,) * lead] for i, a in inputs.items()}
        try:
            checks, notes = test_draw(DrawUnderTest(node, one, fed, natural, spec), opset,
                                      ir_version, seed)
        except Exception as e:  # noqa: BLE001 - onnxfix's own test model failed
            _failed(parity, f"the distribution test of {label} could not run (onnxfix's "
                            f"test model, not yours): {one_line(e, 200)}", emit)
            ok = False
            continue
        for note in notes:
            emit(f"NOTE | distribution | {label}: {note}")
        for check in checks:
            parity.distributions.append(check)
            word, sign = ("PASSED", "<=") if check.passed else ("FAILED", ">")
            line = (f"{label} vs {check.against} | chi2 {check.statistic:.4g} {sign} "
                    f"{check.threshold:.4g} (df {check.df}, {check.samples:,} samples)")
            emit(f"{word} | distribution | {line}")
            if not check.passed:
                ok = False
                if not parity.reason:
                    parity.reason = f"distribution test failed: {line}"
    return ok


def wants_test(op_type: str, repl) -> bool:
    """Whether a rewritten draw (its Replacement) gets the distribution test."""
    return needs_test(op_type, *_noise_types(repl))


def _noise_types(repl) -> tuple[int, int]:
    """(fed, natural) elem types of a noise input's Replacement."""
    fed = onnx.TensorProto.DataType.Value(repl.dtype.upper())
    return fed, onnx.TensorProto.DataType.Value((repl.cast_to or repl.dtype).upper())


def _failed(parity, reason: str, emit) -> None:
    if not parity.reason:
        parity.reason = reason
    emit(f"FAILED | {reason}")
