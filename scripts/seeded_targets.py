"""Run the seeded generator on every installed runtime; compare with the numpy reference.

    python scripts/seeded_targets.py [--fixtures DIR]... [--runtime LABEL]... [--out TABLE.md]

Each case is a model whose only output is one seeded draw (onnxfix.seeded), run with a few
seeds on onnxruntime and on every runtime scripts/targets.py finds (OpenVINO, tract, MNN,
onnx2torch). A cell reads `exact` when every uniform equals the numpy reference bit for bit,
`max abs X` for normals (Log, Sqrt and Cos round as each runtime does), else what failed.
With --fixtures, a second table: every model in DIR rewritten with `--mode seeded` (symbolic
dims fixed to 2), its main-graph draws exposed, run with seeds 0, 1 and 2026 on each runtime
and compared with onnxruntime (below opset 7, which it cannot run, on a copy converted to
opset 7): `exact` when every draw is bit-identical, else the largest
difference of the draws that round (normals; Dropout's output, the data times the mask times
1 / (1 - ratio)), while draws built from uniforms alone must stay exact; else what failed.
A model whose draws cannot be exposed (inside Loop, If or Scan bodies or a function, or untyped
by inference) gets an `outputs` row instead: the seeded model's own outputs for the same seed
and inputs, integer outputs bit for bit, float ones within the normals' rule (1e-4 abs +
1e-4 relative, 2e-3 for float16). --outputs-only runs just those rows.
Install the runtimes into a separate venv (see scripts/targets.py).
"""

from __future__ import annotations

import argparse
import multiprocessing
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

import onnxfix  # noqa: E402
from onnxfix.check.opset_bridge import BRIDGE_OPSET, needs_bridge, to_bridge_opset  # noqa: E402
from onnxfix.graph.builder import NodeBuilder  # noqa: E402
from onnxfix.graph.naming import NameAllocator  # noqa: E402
from onnxfix.seeded import algorithm  # noqa: E402
from onnxfix.seeded.graph import seeded_gumbel, seeded_normal, seeded_uniform  # noqa: E402

KEY = algorithm.node_key("seeded_targets")
SEEDS = (0, 1, 2026, 2 ** 24 - 1)
SHAPE = [3, 5000]  # 15000 elements: the counter's low and middle words
ITERATIONS = (4097, 3)  # the outer and inner loop's index of the cases with loops


@dataclass(frozen=True)
class Case:
    label: str
    opset: int
    family: str = "uniform"  # "uniform", "normal" or "gumbel"
    runtime_shape: bool = False
    loops: int = 0  # enclosing loops: one iteration index input each
    double: bool = False
    seeds: tuple[int, ...] = SEEDS
    known_rank: bool = True  # False: the draw is built as for a source no inference ranks

    @property
    def exact(self) -> bool:
        """Uniforms must be bit-identical; normals and Gumbel noise round in Log/Sqrt/Cos."""
        return self.family == "uniform"

    @property
    def iteration_inputs(self) -> list[str]:
        return ["iteration", "inner_iteration"][:self.loops]

    def model(self) -> onnx.ModelProto:
        dtype = TensorProto.DOUBLE if self.double else TensorProto.FLOAT
        inputs = [helper.make_tensor_value_info("seed", TensorProto.INT64, [])]
        if self.runtime_shape:  # as RandomNormalLike: the shape of a tensor with symbolic dims
            inputs.append(helper.make_tensor_value_info("like", TensorProto.FLOAT,
                                                        ["batch", "n"]))
        inputs += [helper.make_tensor_value_info(name, TensorProto.INT64, [])
                   for name in self.iteration_inputs]
        out = helper.make_tensor_value_info("y", dtype, [None, None] if self.runtime_shape
                                            else SHAPE)
        model = helper.make_model(helper.make_graph([], "seeded", inputs, [out]),
                                  opset_imports=[helper.make_opsetid("", self.opset)])
        model.ir_version = 7
        b = NodeBuilder(NameAllocator(model), self.opset, "seeded")
        if self.runtime_shape:
            b.op("Shape", ["like"], "shape", output="shape")
        draw = {"uniform": seeded_uniform, "normal": seeded_normal,
                "gumbel": seeded_gumbel}[self.family]
        draw(b, "seed", KEY, "shape" if self.runtime_shape else SHAPE,
             self.iteration_inputs or None, dtype, output="y",
             rank=len(SHAPE) if self.known_rank else None)
        model.graph.node.extend(b.nodes)
        onnx.checker.check_model(model, full_check=True)
        return model

    def feeds(self, seed: int) -> dict:
        feeds = {"seed": np.array(seed, dtype=np.int64)}
        if self.runtime_shape:
            feeds["like"] = np.zeros(SHAPE, dtype=np.float32)
        for name, index in zip(self.iteration_inputs, ITERATIONS, strict=False):
            feeds[name] = np.array(index, dtype=np.int64)
        return feeds

    def reference(self, seed: int) -> np.ndarray:
        draw = algorithm.family_draw(self.family, self.opset)  # opset 6: another cosine
        return draw(seed, KEY, SHAPE, np.float64 if self.double else np.float32,
                    ITERATIONS[:self.loops] or None)


CASES = [
    Case("uniform f32, static, opset 11", 11),
    Case("uniform f32, runtime shape, opset 13", 13, runtime_shape=True),
    Case("uniform f32, runtime shape + iteration, opset 11", 11, runtime_shape=True, loops=1),
    Case("uniform f32, runtime shape + iteration, opset 17", 17, runtime_shape=True, loops=1),
    Case("uniform f32, static + iteration, opset 18", 18, loops=1),
    Case("uniform f32, runtime shape + 2 nested iterations, opset 17", 17, runtime_shape=True,
         loops=2),
    Case("uniform f32, runtime shape of unknown rank, opset 13", 13, runtime_shape=True,
         known_rank=False),
    Case("uniform f32, runtime shape of unknown rank, opset 17", 17, runtime_shape=True,
         known_rank=False),
    Case("uniform f32, static, opset 9 (no Range/Mod)", 9),
    Case("uniform f32, runtime shape, opset 10 (NonZero counts)", 10, runtime_shape=True),
    Case("uniform f64, static, opset 17", 17, double=True),
    Case("normal f32, static, opset 17", 17, "normal"),
    Case("normal f32, runtime shape, opset 18", 18, "normal", runtime_shape=True),
    Case("normal f64, static, opset 17", 17, "normal", double=True),
    Case("gumbel f32, runtime shape, opset 13", 13, "gumbel", runtime_shape=True),
    Case("uniform f32, seeds -1 and 2^24 + 3 (outside [0, 2^24)), opset 17", 17,
         seeds=(-1, 2 ** 24 + 3)),
    # opset 6: legacy broadcasting, no Cos (onnxruntime runs no opset-6 Mul: its cell fails)
    Case("uniform f32, static, opset 6", 6),
    Case("uniform f64, static, opset 6", 6, double=True),
    Case("normal f32, static, opset 6 (float64 polynomial cosine)", 6, "normal"),
    Case("normal f64, static, opset 6", 6, "normal", double=True),
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
    if case.exact:
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


def runtimes(only: list[str] | None = None) -> dict:
    """onnxruntime and the installed targets (`only` these labels, when given)."""
    found = {"onnxruntime": targets._onnxruntime, **targets.installed(only)}
    if "tract" in found:
        found["tract"] = _tract
    return found


def table(only: list[str] | None = None) -> str:
    found = runtimes(only)
    lines = ["| case | " + " | ".join(found) + " |", "|---" * (len(found) + 1) + "|"]
    with tempfile.TemporaryDirectory() as tmp:
        for case in CASES:
            cells = [cell(case, label, make, Path(tmp))[1] for label, make in found.items()]
            lines.append(f"| {case.label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- seeded rewrites of the fixtures (onnxfix --mode seeded) ---------------------------------

FIXTURE_SEEDS = (0, 1, 2026)
# draws that are not a function of uniforms alone: normals (Log, Sqrt, Cos) and Dropout's
# output (the data times the mask, times 1 / (1 - ratio): float rounding)
ROUNDED_OPS = ("RandomNormal", "RandomNormalLike", "Dropout")


def seeded_fixture(path: Path, folder: Path) -> tuple[Path, onnx.ModelProto, dict[str, bool]]:
    """The seeded rewrite of `path` (symbolic dims fixed to 2), its main-graph draws exposed
    as outputs; returns the file, the model and {draw: built from uniforms (exact)}."""
    model = onnx.load(path)
    dims = {d.dim_param: 2 for i in model.graph.input
            for d in i.type.tensor_type.shape.dim if d.dim_param}
    new, report = onnxfix.rewrite(model, "seeded", dims=dims, check=False)
    types = {v.name: v for v in onnx.shape_inference.infer_shapes(new).graph.value_info
             if v.type.tensor_type.HasField("shape")}
    have = {o.name for o in new.graph.output}
    draws = {}
    for rec in report.nodes:
        if rec.status != "rewritten" or rec.graph != "main":
            continue
        if rec.output not in have:
            if rec.output not in types:
                continue
            new.graph.output.append(types[rec.output])
        draws[rec.output] = rec.op_type not in ROUNDED_OPS
    out = folder / path.name
    onnx.save(new, out)
    return out, new, draws


def output_kinds(model: onnx.ModelProto) -> dict[str, bool]:
    """{output: compared exactly}: integer and bool outputs bit for bit, float ones within the
    normals' rule (for a model whose draws cannot be exposed: its `outputs` row)."""
    floats = (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16)
    return {o.name: o.type.tensor_type.elem_type not in floats for o in model.graph.output}


def fixture_cell(make, path: Path, model: onnx.ModelProto, draws: dict[str, bool],
                 want: dict[int, dict], scratch: Path, outputs: bool = False) -> str:
    """Every seed's draws against onnxruntime's: uniform-based ones bit for bit, the others
    within float rounding (1e-4 abs + rel, 2e-3 for float16, as scripts/targets.py). With
    `outputs`, `draws` are the model's own outputs (see output_kinds)."""
    try:
        run = make(path, model, scratch)
    except Exception as e:  # noqa: BLE001 - the runtime's refusal is the finding
        return "converts: no (" + targets._short(e) + ")"
    worst = 0.0
    for seed, expected in want.items():
        try:
            got = run(_seeded_feeds(model, seed))
        except Exception as e:  # noqa: BLE001
            return "runs: no (" + targets._short(e) + ")"
        for name, exact in draws.items():
            a, b = np.asarray(got[name]), np.asarray(expected[name])
            if a.shape != b.shape:
                return f"shape {list(a.shape)} ('{name}')"
            diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
            if exact and diff.any():
                what = "integers" if outputs else "uniforms"
                return f"{what} differ ('{name}', {np.count_nonzero(diff)}/{diff.size})"
            atol, rtol = (targets.FLOAT16_TOLERANCE if b.dtype == np.float16
                          else targets.DEFAULT_TOLERANCE)
            if not np.all(diff <= atol + rtol * np.abs(b.astype(np.float64))):
                return f"differs ('{name}', max {diff.max():.1e})"
            worst = max(worst, float(diff.max(initial=0.0)))
    if outputs:
        return _outputs_text(draws, worst)
    if not any(draws.values()):
        return f"max abs {worst:.0e}"
    return "exact" if worst == 0 else f"uniforms exact, others max abs {worst:.0e}"


def _outputs_text(kinds: dict[str, bool], worst: float) -> str:
    if worst == 0:
        return "outputs exact"
    if any(kinds.values()):
        return f"outputs: integers exact, floats max abs {worst:.0e}"
    return f"outputs max abs {worst:.0e}"


CELL_TIMEOUT = 120  # seconds per runtime and model (a runtime that hangs ends its cell)


def _isolated(fn, *args) -> str:
    """fn(*args) in a child process: a runtime that aborts (tract panics without unwinding
    on some graphs) or hangs ends its cell, not the table. The children come from a fork
    server (a clean process): forking this one, whose onnxruntime, torch and MNN thread pools
    are running, can deadlock the child."""
    ctx = multiprocessing.get_context("forkserver")
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_cell_child, args=(send, fn, args))
    proc.start()
    send.close()
    proc.join(CELL_TIMEOUT)
    if proc.is_alive():
        proc.kill()
        proc.join()
        return f"no answer in {CELL_TIMEOUT} s"
    if proc.exitcode == 0 and receive.poll():
        return receive.recv()
    return f"crashes (process exit code {proc.exitcode})"


def _cell_child(send, fn, args) -> None:
    send.send(fn(*args))


def _seeded_feeds(model: onnx.ModelProto, seed: int) -> dict:
    feeds = targets.feeds_for(model, 0)  # the data inputs stay; the seed input changes
    feeds.update(onnxfix.noise_feeds(model, seed=seed))
    return feeds


def _reference_runner(path: Path, model: onnx.ModelProto, scratch: Path):
    """onnxruntime on the model; below opset 7, which it cannot run, on its copy converted
    to opset 7 (as the check does: `onnxfix.check.opset_bridge`)."""
    if not needs_bridge(model):
        return targets._onnxruntime(path, model, scratch)
    converted = to_bridge_opset(model, "the seeded model")
    copy = scratch / f"{path.stem}_opset{BRIDGE_OPSET}.onnx"
    onnx.save(converted, copy)
    return targets._onnxruntime(copy, converted, scratch)


def fixture_table(models: list[Path], outputs_only: bool = False,
                  only: list[str] | None = None) -> str:
    """A row per model: its exposed draws, else (`outputs`) its own outputs."""
    found = {k: v for k, v in runtimes(only).items() if k != "onnxruntime"}
    lines = ["| seeded fixture (draws, or outputs) | " + " | ".join(found) + " |",
             "|---" * (len(found) + 1) + "|"]
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        for path in models:
            try:
                new_path, model, draws = seeded_fixture(path, scratch)
            except onnxfix.OnnxfixError as e:  # seeded mode refuses it: the reason is the row
                if outputs_only:
                    continue
                lines.append(f"| {path.stem} | refused: {e} |" + " |" * (len(found) - 1))
                continue
            outputs = not draws
            if outputs_only and not outputs:
                continue
            if outputs:
                draws = output_kinds(model)
            ref = _reference_runner(new_path, model, scratch)
            want = {s: ref(_seeded_feeds(model, s)) for s in FIXTURE_SEEDS}
            cells = [_isolated(fixture_cell, make, new_path, model, draws, want, scratch,
                               outputs).replace("|", "/") for make in found.values()]
            what = f"outputs: {len(draws)}" if outputs else str(len(draws))
            lines.append(f"| {path.stem} ({what}) | " + " | ".join(cells) + " |")
            print(lines[-1], file=sys.stderr, flush=True)  # progress: rows as they come
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--fixtures", action="append", type=Path,
                        help="also run the seeded rewrites of the .onnx models in this folder "
                             "on every runtime (repeatable)")
    parser.add_argument("--outputs-only", action="store_true",
                        help="with --fixtures: only the models compared by their outputs "
                             "(draws that cannot be exposed), and no generator table")
    parser.add_argument("--runtime", action="append",
                        help="only this runtime (repeatable; default: every one installed, "
                             "e.g. OpenVINO in the IREE venv too)")
    args = parser.parse_args(argv)
    parts = [] if args.outputs_only else [table(args.runtime)]
    if args.fixtures:
        models = sorted(p for f in args.fixtures for p in f.glob("*.onnx"))
        parts.append(fixture_table(models, args.outputs_only, args.runtime))
    text = "\n\n".join(parts)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
