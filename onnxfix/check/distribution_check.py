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

import numpy as np
import onnx
from onnx import helper

from onnxfix.check.compare import make_session, run_all
from onnxfix.errors import one_line
from onnxfix.graph.builder import NodeBuilder
from onnxfix.graph.naming import NameAllocator
from onnxfix.ops import OP_TABLE, RandomOp, attrs_of, np_dtype, spec_for
from onnxfix.ops.base import with_attr
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
class Harness:
    """What an op's distribution test (its `distribution_test(h)`) works with: the draw under
    test, seeded standard noise, and onnxruntime runs of the rewritten transform and of the
    original node, each in a small model of its own."""

    draw: DrawUnderTest
    opset: int
    ir_version: int
    rng: np.random.Generator
    seed: int
    trials: int = TRIALS
    max_elements: int = MAX_ELEMENTS
    multinomial_noise: int = MULTINOMIAL_NOISE
    chunk_noise: int = CHUNK_NOISE
    multinomial_rows: int = MULTINOMIAL_ROWS
    affine_samples: int = AFFINE_SAMPLES
    affine_bins: int = AFFINE_BINS

    @property
    def node(self) -> onnx.NodeProto:
        return self.draw.node

    @property
    def spec(self) -> RandomOp:
        return self.draw.spec

    def noise(self, shape) -> np.ndarray:
        """Seeded standard noise of the op's family, in the fed dtype."""
        return standard_noise(self.rng, self.spec.family, shape, np_dtype(self.draw.fed))

    def transform(self, noise: np.ndarray, arrays: dict[str, np.ndarray],
                  node: onnx.NodeProto, output: str) -> np.ndarray:
        """Run the rewritten transform of `node` on `noise` (fed dtype) and its inputs."""
        spec = self.spec
        elem = {n: helper.np_dtype_to_tensor_dtype(a.dtype) for n, a in arrays.items()}
        dtypes = spec.dtypes(node, lambda name: elem.get(name, self.draw.natural))
        shell = helper.make_model(helper.make_graph([node], "shell", [], []))
        names = NameAllocator(shell)
        b = NodeBuilder(names, self.opset, "onnxfix_dist")
        fed = names.fresh("onnxfix_dist_noise")
        inner = fed
        if self.draw.fed != dtypes.noise:
            inner = b.op("Cast", [fed], "noise_cast", to=dtypes.noise)

        def shape_of(name: str) -> list | None:
            return list(arrays[name].shape) if name in arrays else None

        spec.transform(b, inner, node, {**attrs_of(node), **spec.shape_facts(node, shape_of)},
                       dtypes)
        return self._run(b.nodes, {fed: noise, **arrays}, output)

    def original(self, node: onnx.NodeProto, arrays: dict[str, np.ndarray],
                 output: str) -> np.ndarray:
        """Run the original node in onnxruntime, seeded."""
        seed = spec_for(node).seed_attribute(self.seed % 2**24)
        return self._run([with_attr(node, "seed", seed)], arrays, output)

    def _run(self, nodes, arrays: dict[str, np.ndarray], output: str) -> np.ndarray:
        read = {i for n in nodes for i in n.input if i}
        made = {o for n in nodes for o in n.output if o}
        inputs = [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(a.dtype),
                                                list(a.shape))
                  for name, a in arrays.items() if name in read - made]
        graph = helper.make_graph(nodes, "distribution_test", inputs,
                                  [helper.make_empty_tensor_value_info(output)])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)],
                                  ir_version=self.ir_version)
        feeds = {i.name: arrays[i.name] for i in inputs}
        return run_all(make_session(model), feeds)[output]


def needs_test(op_type: str, fed: int, natural: int) -> bool:
    """Discrete transforms, and any noise fed narrower than its in-graph dtype."""
    return OP_TABLE[op_type].discrete or _WIDTH.get(fed, 4) < _WIDTH.get(natural, 4)


def test_draw(draw: DrawUnderTest, opset: int, ir_version: int, seed: int) -> tuple[
        list[DistributionCheck], list[str]]:
    """The draw's tests (the op class's `distribution_test`), and notes on what was not
    tested."""
    key = zlib.crc32(draw.node.output[0].encode())
    h = Harness(draw, opset, ir_version, np.random.default_rng([seed, key]), seed)
    results, notes = draw.spec.distribution_test(h)
    checks = [DistributionCheck(draw.node.output[0], draw.node.op_type, against,
                                chi.statistic, chi.threshold, chi.df, samples, chi.passed)
              for against, chi, samples in results]
    return checks, notes


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
