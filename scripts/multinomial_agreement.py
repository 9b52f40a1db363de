"""How often each runtime picks another class than onnxruntime for the same Multinomial noise.

    python scripts/multinomial_agreement.py [--classes 50257] [--samples 2000]
                                            [--gumbel-samples 200] [--venv V]...

Writes two models with one [1, classes] row of logits N(0, 2^2) (seeded, a constant) and
`samples` uniforms as the input, then runs scripts/targets.py on them (every installed runtime,
and each --venv's), which prints per runtime how many samples differ from onnxruntime:

- multinomial_float_cdf: a plain Multinomial, which onnxfix rewrites to its inverse CDF
  (Softmax, CumSum, Div by the total, the first class whose cdf lies above u): float32 sums,
  whose rounding depends on each runtime's summation order;
- multinomial_integer_cdf: a probe of a form that rounds the same everywhere: q = Floor(p * 2^23)
  (Mul by a power of two is exact, so runtimes disagree only where an ulp of p crosses a
  multiple of 2^-23), integer-valued sums below 2^24 (exact in float32 in any order), and
  u * total (one correctly rounded product); the sample is the first class whose q-cumsum
  lies above u * total. Classes of probability below 2^-23 are never drawn, and every class's
  probability moves by less than 2^-23 (float32 cdfs already round by 2^-24 near 1);
- multinomial_gumbel (a second targets.py run, `--multinomial gumbel`): the same Multinomial
  rewritten to Gumbel-max, ArgMax(logits + g) with g [1, samples, classes] standard Gumbel
  noise fed from the host: one correctly rounded Add, so no runtime should differ. Its noise
  is `classes` floats per sample, hence fewer samples (--gumbel-samples: 200 x 50,257 floats
  is 40 MB per feed).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
import targets  # noqa: E402

OPSET = 17


def _logits(classes: int, seed: int) -> onnx.TensorProto:
    rng = np.random.default_rng(seed)
    values = (2.0 * rng.standard_normal((1, classes))).astype(np.float32)
    return numpy_helper.from_array(values, "logits")


def float_cdf_model(classes: int, samples: int, seed: int) -> onnx.ModelProto:
    node = helper.make_node("Multinomial", ["logits"], ["y"], sample_size=samples,
                            dtype=TensorProto.INT64)
    graph = helper.make_graph([node], "multinomial", [],
                              [helper.make_tensor_value_info("y", TensorProto.INT64,
                                                             [1, samples])],
                              initializer=[_logits(classes, seed)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                             ir_version=8)


def integer_cdf_model(classes: int, samples: int, seed: int) -> onnx.ModelProto:
    consts = [numpy_helper.from_array(np.array(v, dt), n) for n, v, dt in (
        ("scale", 2.0 ** 23, np.float32), ("axis", 1, np.int64), ("last", [-1], np.int64),
        ("end", [2**62], np.int64), ("one", [1], np.int64), ("two", [2], np.int64))]
    nodes = [
        helper.make_node("Softmax", ["logits"], ["p"], axis=1),
        helper.make_node("Mul", ["p", "scale"], ["p_scaled"]),
        helper.make_node("Floor", ["p_scaled"], ["q"]),
        helper.make_node("CumSum", ["q", "axis"], ["cum"], exclusive=0, reverse=0),
        helper.make_node("Slice", ["cum", "last", "end", "one"], ["total"]),
        helper.make_node("Mul", ["u", "total"], ["u_total"]),  # [1, samples] * [1, 1]
        helper.make_node("Unsqueeze", ["cum", "one"], ["cum_3d"]),
        helper.make_node("Unsqueeze", ["u_total", "two"], ["u_3d"]),
        helper.make_node("Sub", ["cum_3d", "u_3d"], ["diff"]),
        helper.make_node("Div", ["diff", "total"], ["diff_unit"]),  # sign kept, in (-1, 1]
        helper.make_node("Ceil", ["diff_unit"], ["above"]),
        helper.make_node("ArgMax", ["above"], ["y"], axis=2, keepdims=0),
    ]
    graph = helper.make_graph(nodes, "integer_cdf",
                              [helper.make_tensor_value_info("u", TensorProto.FLOAT,
                                                             [1, samples])],
                              [helper.make_tensor_value_info("y", TensorProto.INT64,
                                                             [1, samples])],
                              initializer=[_logits(classes, seed), *consts])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                             ir_version=8)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=50257)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--gumbel-samples", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args, rest = parser.parse_known_args(argv)
    with tempfile.TemporaryDirectory(prefix="onnxfix-multinomial-") as tmp:
        cdf, gumbel = Path(tmp) / "fixtures", Path(tmp) / "gumbel" / "fixtures"
        gumbel.mkdir(parents=True)
        cdf.mkdir()
        for folder, name, make, samples in (
                (cdf, "multinomial_float_cdf", float_cdf_model, args.samples),
                (cdf, "multinomial_integer_cdf", integer_cdf_model, args.samples),
                (gumbel, "multinomial_gumbel", float_cdf_model, args.gumbel_samples)):
            model = make(args.classes, samples, args.seed)
            onnx.checker.check_model(model, full_check=True)
            onnx.save(model, folder / f"{name}.onnx")
        first = targets.main(["--fixtures", str(cdf), *rest])
        second = targets.main(["--fixtures", str(gumbel), "--multinomial", "gumbel", *rest])
        return max(first, second)


if __name__ == "__main__":
    sys.exit(main())
