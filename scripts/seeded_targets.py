"""Run the seeded generator on every installed runtime; compare with the numpy reference.

    python scripts/seeded_targets.py [--out TABLE.md]

Each case is a model whose only output is one seeded draw (onnxfix.seeded), run with a few
seeds on onnxruntime and on every runtime scripts/targets.py finds (OpenVINO, tract, MNN,
onnx2torch). A cell reads `exact` when every uniform equals the numpy reference bit for bit,
`max abs X` for normals (Log, Sqrt and Cos round as each runtime does), else what failed.
Install the runtimes into a separate venv (see scripts/targets.py).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import targets  # noqa: E402

from onnxfix.graph.builder import NodeBuilder  # noqa: E402
from onnxfix.graph.naming import NameAllocator  # noqa: E402
from onnxfix.seeded import algorithm  # noqa: E402
from onnxfix.seeded.graph import seeded_normal, seeded_uniform  # noqa: E402

KEY = algorithm.node_key("seeded_targets")
SEEDS = (0, 1, 2026, 2 ** 24 - 1)
SHAPE = [3, 5000]  # 15000 elements: the counter's low and middle words
ITERATION = 4097


@dataclass(frozen=True)
class Case:
    label: str
    opset: int
    normal: bool = False
    runtime_shape: bool = False
    iteration: bool = False
    double: bool = False
    seeds: tuple[int, ...] = SEEDS

    def model(self) -> onnx.ModelProto:
        dtype = TensorProto.DOUBLE if self.double else TensorProto.FLOAT
        inputs = [helper.make_tensor_value_info("seed", TensorProto.INT64, [])]
        if self.runtime_shape:  # as RandomNormalLike: the shape of a tensor with symbolic dims
            inputs.append(helper.make_tensor_value_info("like", TensorProto.FLOAT,
                                                        ["batch", "n"]))
        if self.iteration:
            inputs.append(helper.make_tensor_value_info("iteration", TensorProto.INT64, []))
        out = helper.make_tensor_value_info("y", dtype, [None, None] if self.runtime_shape
                                            else SHAPE)
        model = helper.make_model(helper.make_graph([], "seeded", inputs, [out]),
                                  opset_imports=[helper.make_opsetid("", self.opset)])
        model.ir_version = 7
        b = NodeBuilder(NameAllocator(model), self.opset, "seeded")
        if self.runtime_shape:
            b.op("Shape", ["like"], "shape", output="shape")
        draw = seeded_normal if self.normal else seeded_uniform
        draw(b, "seed", KEY, "shape" if self.runtime_shape else SHAPE,
             "iteration" if self.iteration else None, dtype, output="y")
        model.graph.node.extend(b.nodes)
        onnx.checker.check_model(model, full_check=True)
        return model

    def feeds(self, seed: int) -> dict:
        feeds = {"seed": np.array(seed, dtype=np.int64)}
        if self.runtime_shape:
            feeds["like"] = np.zeros(SHAPE, dtype=np.float32)
        if self.iteration:
            feeds["iteration"] = np.array(ITERATION, dtype=np.int64)
        return feeds

    def reference(self, seed: int) -> np.ndarray:
        draw = algorithm.normal if self.normal else algorithm.uniform
        return draw(seed, KEY, SHAPE, np.float64 if self.double else np.float32,
                    ITERATION if self.iteration else None)


CASES = [
    Case("uniform f32, static, opset 11", 11),
    Case("uniform f32, runtime shape, opset 13", 13, runtime_shape=True),
    Case("uniform f32, runtime shape + iteration, opset 17", 17, runtime_shape=True,
         iteration=True),
    Case("uniform f32, static + iteration, opset 18", 18, iteration=True),
    Case("uniform f32, static, opset 9 (no Range/Mod)", 9),
    Case("uniform f64, static, opset 17", 17, double=True),
    Case("normal f32, static, opset 17", 17, normal=True),
    Case("normal f32, runtime shape, opset 18", 18, normal=True, runtime_shape=True),
    Case("normal f64, static, opset 17", 17, normal=True, double=True),
    Case("uniform f32, seeds -1 and 2^24 + 3 (outside [0, 2^24)), opset 17", 17,
         seeds=(-1, 2 ** 24 + 3)),
]


def compare(case: Case, run) -> tuple[bool, str, float]:
    """(uniforms exact or normals finite, cell text, max abs difference) over SEEDS."""
    worst, mismatched = 0.0, 0
    for seed in case.seeds:
        got = np.asarray(run(case.feeds(seed))["y"])
        want = case.reference(seed)
        if got.shape != want.shape:
            return False, f"shape {list(got.shape)}", float("inf")
        diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
        worst = max(worst, float(diff.max()))
        mismatched += int(np.count_nonzero(diff))
    if not case.normal:
        total = len(case.seeds) * int(np.prod(SHAPE))
        return mismatched == 0, "exact" if not mismatched else \
            f"{mismatched}/{total} differ (max {worst:.1e})", worst
    return bool(np.isfinite(worst)), f"max abs {worst:.1e}", worst


def cell(case: Case, label: str, make, scratch: Path) -> tuple[bool, str]:
    path = scratch / f"case{CASES.index(case)}.onnx"
    model = case.model()
    onnx.save(model, path)
    try:
        ok, text, _ = compare(case, make(path, model, scratch))
    except Exception as e:  # noqa: BLE001 - the runtime's refusal is the finding
        return False, "fails: " + targets._short(e)
    return ok, text


def _tract(path: Path, model: onnx.ModelProto, scratch: Path):
    """targets.py's tract runner, but feeding 0-d inputs as 0-d (np.ascontiguousarray makes
    them 1-d, which tract refuses: "Input at index 0 has incorrect dtype or shape")."""
    import tract

    runnable = tract.onnx().load(str(path)).into_model().into_runnable()
    ins, outs = targets.input_names(model), targets.output_names(model)

    def run(feeds: dict) -> dict:
        got = runnable.run([np.array(feeds[n], order="C") for n in ins])
        return {n: t.to_numpy() for n, t in zip(outs, got, strict=True)}
    return run


def runtimes() -> dict:
    found = {"onnxruntime": targets._onnxruntime, **targets.installed()}
    if "tract" in found:
        found["tract"] = _tract
    return found


def table() -> str:
    found = runtimes()
    lines = ["| case | " + " | ".join(found) + " |", "|---" * (len(found) + 1) + "|"]
    with tempfile.TemporaryDirectory() as tmp:
        for case in CASES:
            cells = [cell(case, label, make, Path(tmp))[1] for label, make in found.items()]
            lines.append(f"| {case.label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    text = table()
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
