"""Run every fixture's rewrite on each installed deployment runtime; compare with onnxruntime.

    python scripts/targets.py [--venv VENV]... [--fixtures DIR]... [--runtime LABEL]...
                              [--model TEXT]... [--jobs N] [--out TABLE.md]
                              [--multinomial inverse-cdf|gumbel]

For each model: rewrite it (input-noise, every symbolic dim fixed to 2 so runtimes that need
static shapes can compile it), feed seeded inputs (by role: ids, counts, masks, probabilities)
and seeded standard noise, run it in this Python's onnxruntime (the reference), then convert
and run it twice on every runtime installed in this Python and in each --venv's Python:
OpenVINO (CPU, f32 inference precision), tract, MNN, onnx2torch, IREE (llvm-cpu), ncnn (through
pnnx), Apache TVM (relax, LLVM) and LiteRT (through onnx2tf) - see scripts/target_runners.py.
Each runtime runs in a child process (target_runners.py), so a crash or a hang in native code
costs one cell ("crashed (signal 11)", "timed out"), not the table.

A cell reads `ok (max abs diff)` when both runs are identical and match onnxruntime (floats
within 1e-4 abs + 1e-4 rel, within 2e-3 + 2e-3 where the graph computes in float16, NaN where
onnxruntime has NaN, integers exactly), else what failed. The markdown table is printed (and
written with --out); the README quotes it as printed. Install the runtimes into venvs of their
own, never the shared site (README: "how to run the heavy ones").
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

import target_runners as runners  # noqa: E402

# input_names, installed: also the API scripts/seeded_targets.py uses
from target_runners import RUNTIMES, Failed, Runner, input_names, installed, output_names  # noqa: E402,F401,E501

import onnxfix  # noqa: E402
from onnxfix.check.input_roles import Role, input_roles  # noqa: E402

# (atol, rtol): float16 anywhere in the graph may differ by one float16 step of an
# intermediate (onnxruntime rounds each float16 op, others compute in float32 and round once)
FLOAT16_TOLERANCE = (2e-3, 2e-3)
DEFAULT_TOLERANCE = (1e-4, 1e-4)
SIZE = 2  # every symbolic dim, and the size count inputs are drawn up to
NOISE_BOUND = 64  # the default upper bound of a data-dependent noise dim
STAGE_TIMEOUT = 600  # seconds one conversion or one pair of runs may take
Cells = dict[str, dict[str, list]]  # model row -> runtime label -> [passed, cell]


# -- one model: rewrite, inputs, reference ---------------------------------------------------

def rewritten(path: Path, folder: Path, multinomial: str = "inverse-cdf",
              sizes: dict[str, int] | None = None) -> tuple[Path, onnx.ModelProto]:
    """The input-noise rewrite of `path` with every symbolic dim fixed to SIZE (or to its
    entry in `sizes`)."""
    model = onnx.load(path)
    dims = {d.dim_param: SIZE for i in model.graph.input
            for d in i.type.tensor_type.shape.dim if d.dim_param}
    bounds, loops = _open_noise_dims(path)
    out = folder / path.name
    new, _ = onnxfix.rewrite(model, dims={**dims, **loops, **(sizes or {})},
                             noise_bounds=bounds, check=False, output=out,
                             multinomial=multinomial)
    return out, new


def batch_dim(path: Path) -> str | None:
    """The symbolic dim that leads every graph input of the model (its batch), if one does:
    ncnn runs one sample at a time, so it gets the rewrite at batch 1 too (`batch_twin`)."""
    model = onnx.load(path, load_external_data=False)
    known = {t.name for t in model.graph.initializer}
    leading = set()
    for i in model.graph.input:
        if i.name in known:
            continue
        dims = i.type.tensor_type.shape.dim
        leading.add(dims[0].dim_param if dims and dims[0].dim_param else None)
    return leading.pop() if len(leading) == 1 and None not in leading else None


def batch_twin(path: Path, work: Path, n: int, multinomial: str) -> None:
    """work/N.batch1.onnx: the rewrite with the model's batch dim at 1, for runtimes that take
    one sample at a time (scripts/target_runners.py checks each input and output leads with
    that axis before running sample by sample)."""
    name = batch_dim(path)
    if name is None:
        return
    folder = work / f"src{n}.batch1"
    folder.mkdir()
    try:
        single, _ = rewritten(path, folder, multinomial, {name: 1})
    except Exception:  # noqa: BLE001 - no twin: the runtime takes the whole batch
        return
    single.rename(work / f"{n}.batch1.onnx")


def _open_noise_dims(path: Path) -> tuple[dict[str, int], dict[str, int]]:
    """Sizes the rewrite cannot take from the inputs, as `inspect` names them: each
    data-dependent noise dim bounded by NOISE_BOUND (the graph slices what a run needs), each
    loop iteration axis fixed to SIZE (the count inputs are drawn up to SIZE)."""
    bounds, loops = {}, {}
    for node in onnxfix.inspect(path).nodes:
        for d in (node.noise or {}).get("dims", []):
            if d["kind"] == "data-dependent":
                bounds[d["name"]] = NOISE_BOUND
            elif d["kind"] == "iterations":
                loops[d["name"]] = SIZE
    return bounds, loops


def feeds_for(model: onnx.ModelProto, seed: int = 0) -> dict:
    """Seeded standard noise, and data inputs by their role (ids within their table, counts
    in [1, SIZE], masks, probabilities...); plain floats in [0, 1), plain integers 0 or 1."""
    rng = np.random.default_rng(seed)
    noise = onnxfix.noise_feeds(model, seed=seed)
    roles = input_roles(model)
    known = {t.name for t in model.graph.initializer}
    feeds = {}
    for i in model.graph.input:
        if i.name in known:
            continue
        if i.name in noise:
            feeds[i.name] = noise[i.name]
            continue
        t = i.type.tensor_type
        shape = [d.dim_value for d in t.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)
        if roles[i.name].role is not Role.PLAIN:
            feeds[i.name] = roles[i.name].sample(shape, dtype, SIZE, rng)
        elif np.issubdtype(dtype, np.floating):
            feeds[i.name] = rng.random(shape).astype(dtype)
        elif dtype == np.bool_:
            feeds[i.name] = rng.random(shape) < 0.5
        else:
            feeds[i.name] = rng.integers(0, 2, shape).astype(dtype)
    return feeds


def _onnxruntime(path: Path, model: onnx.ModelProto, scratch: Path) -> Runner:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = output_names(model)
    return lambda feeds: dict(zip(names, sess.run(names, feeds), strict=True))


def tolerance(model: onnx.ModelProto) -> tuple[float, float]:
    """Wider where any tensor of the graph is float16 (see FLOAT16_TOLERANCE)."""
    f16 = onnx.TensorProto.FLOAT16
    typed = list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info)
    if any(v.type.tensor_type.elem_type == f16 for v in typed):
        return FLOAT16_TOLERANCE
    inferred = onnx.shape_inference.infer_shapes(model)
    if any(v.type.tensor_type.elem_type == f16 for v in inferred.graph.value_info):
        return FLOAT16_TOLERANCE
    return DEFAULT_TOLERANCE


def _short(e: BaseException) -> str:
    """An error as one short line (a table cell)."""
    text = " ".join(str(e).split()) or type(e).__name__
    return (text[:90] + "...") if len(text) > 90 else text


# -- judging one runtime's two runs -----------------------------------------------------------

def judge(first: list, second: list, want: dict, tol: tuple[float, float]) -> tuple[bool, str]:
    """(passed, table cell) from both runs' outputs (graph output order) and the reference."""
    worst = 0.0
    for (name, expected), a, b in zip(want.items(), first, second, strict=True):
        a, b = np.asarray(a), np.asarray(b)
        if not np.array_equal(a, b, equal_nan=np.issubdtype(a.dtype, np.floating)):
            return False, f"repeatable: no ('{name}')"
        if a.shape != expected.shape:
            return False, f"shape {list(a.shape)} != {list(expected.shape)} ('{name}')"
        if not np.issubdtype(expected.dtype, np.floating):
            if not np.array_equal(a.astype(expected.dtype), expected):
                wrong = int(np.count_nonzero(a.astype(expected.dtype) != expected))
                return False, f"differs ('{name}', {wrong} of {expected.size} integers)"
            continue
        got, ref = a.astype(np.float64), expected.astype(np.float64)
        if not np.array_equal(np.isnan(got), np.isnan(ref)):
            return False, f"differs ('{name}', NaN elsewhere)"
        finite = ~np.isnan(ref)
        diff = np.abs(got[finite] - ref[finite])
        atol, rtol = tol
        if not np.all(diff <= atol + rtol * np.abs(ref[finite])):
            return False, f"differs ('{name}', max {diff.max():.1e})"
        worst = max(worst, float(diff.max(initial=0.0)))
    return True, f"ok ({worst:.0e})" if worst else "ok (exact)"


def verdict(make: Callable, path: Path, model: onnx.ModelProto, feeds: dict, want: dict,
            scratch: Path) -> tuple[bool, str]:
    """(passed, table cell) for one runtime on one rewritten model, in this process."""
    try:
        first, second = runners.outcome(make, path, model, feeds, scratch)
    except Failed as e:
        return False, str(e)
    return judge(first, second, want, tolerance(model))


# -- every model on every runtime, each runtime in a child process -----------------------------

@dataclass
class Case:
    row: str  # the table's row name
    model: onnx.ModelProto
    want: dict
    tol: tuple[float, float]


def label(path: Path) -> str:
    """The model's row name: its stem, prefixed by its folder unless that is fixtures/."""
    folder = path.parent.name
    return path.stem if folder == "fixtures" else f"{folder}/{path.stem}"


def prepare(models: list[Path], work: Path, multinomial: str = "inverse-cdf",
            twins: bool = False) -> tuple[dict[str, Case], dict[str, str]]:
    """Rewrite each model into work/N.onnx with its feeds and reference (and, with `twins`,
    its batch-1 twin); and the models that never reach a runtime (the rewrite or onnxruntime
    refused them), with why."""
    cases: dict[str, Case] = {}
    skipped: dict[str, str] = {}
    for n, path in enumerate(models):
        row = label(path)
        print(f"rewriting {row}", file=sys.stderr, flush=True)
        try:
            folder = work / f"src{n}"
            folder.mkdir()
            new_path, model = rewritten(path, folder, multinomial)
            new_path.rename(work / f"{n}.onnx")
            feeds = feeds_for(model)
            want = _onnxruntime(work / f"{n}.onnx", model, work)(feeds)
        except Exception as e:  # noqa: BLE001 - listed under the table
            skipped[row] = str(Failed("rewrite", e)).removeprefix("rewrite: no (")[:-1]
            continue
        np.savez(work / f"{n}.feeds.npz", **feeds)
        shapes = {k: list(v.shape) for k, v in want.items()}  # ncnn's runner reshapes to these
        (work / f"{n}.outputs.json").write_text(json.dumps(shapes))
        if twins:
            batch_twin(path, work, n, multinomial)
        cases[str(n)] = Case(row, model, want, tolerance(model))
    return cases, skipped


def run_runtime(python: str, runtime: str, cases: dict[str, Case], work: Path) -> dict:
    """runtime's cell for every case, from as many children as crashes need."""
    cells: dict[str, list] = {}
    progress = work / f"{runners.slug(runtime)}.progress"
    todo = list(cases)
    while todo:
        progress.unlink(missing_ok=True)
        print(f"{runtime}: {len(todo)} models", file=sys.stderr, flush=True)
        child = subprocess.Popen([python, str(HERE / "target_runners.py"), "--runtime", runtime,
                                  "--work", str(work), *todo],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        code = _watch(child, progress)
        for case in list(todo):
            found = _result(work, case, runtime, cases[case])
            if found is None:
                break
            cells[case] = found
            todo.remove(case)
        if todo and code is not None:  # the child died or hung in todo[0]
            stage = progress.read_text().split()[-1] if progress.exists() else "converts"
            why = "timed out" if code == "timeout" else (
                f"crashed (signal {-code})" if code < 0 else f"exited {code}")
            cells[todo.pop(0)] = [False, f"{stage}: {why}"]
    return cells


def _watch(child: subprocess.Popen, progress: Path) -> int | str | None:
    """The child's exit code (None for 0), or "timeout" when one stage took too long."""
    last, since = None, time.monotonic()
    while child.poll() is None:
        time.sleep(0.5)
        mark = progress.read_text() if progress.exists() else None
        if mark != last:
            last, since = mark, time.monotonic()
        elif time.monotonic() - since > STAGE_TIMEOUT:
            child.kill()
            child.wait()
            return "timeout"
    return child.returncode or None


def _result(work: Path, case: str, runtime: str, c: Case) -> list | None:
    stem = work / f"{case}.{runners.slug(runtime)}"
    failed = Path(f"{stem}.json")
    if failed.exists():
        return [False, json.loads(failed.read_text())["cell"]]
    if not Path(f"{stem}.npz").exists():
        return None
    with np.load(f"{stem}.npz") as data:
        count = len(c.want)
        first = [data[f"first_{i}"] for i in range(count)]
        second = [data[f"second_{i}"] for i in range(count)]
    return list(judge(first, second, c.want, c.tol))


def pythons(venvs: list[Path]) -> dict[str, str]:
    """runtime label -> the Python that has it (this one first, then each venv in order)."""
    found: dict[str, str] = {}
    for python in [sys.executable] + [str(v / "bin" / "python") for v in venvs]:
        listed = subprocess.run([python, str(HERE / "target_runners.py"), "--list"],
                                capture_output=True, text=True, check=False)
        if listed.returncode != 0:
            print(f"{python}: cannot list its runtimes", file=sys.stderr)
            continue
        for runtime in json.loads(listed.stdout.strip().splitlines()[-1]):
            found.setdefault(runtime, python)
    return found


def table(cells: Cells, skipped: dict[str, str], columns: list[str]) -> tuple[str, int, int]:
    """The markdown table and its summary; passed pairs, all pairs."""
    lines = ["| model | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 1)]
    passed = total = 0
    for row in sorted(cells):
        shown = []
        for column in columns:
            ok, cell = cells[row][column]
            passed, total = passed + ok, total + 1
            shown.append(cell.replace("|", "/"))
        lines.append(f"| {row} | " + " | ".join(shown) + " |")
    text = "\n".join(lines) + f"\n\n{passed} of {total} model/runtime pairs pass.\n"
    if skipped:
        text += "\nNot run (the rewrite, or onnxruntime on it, with every symbolic dim 2):\n"
        text += "".join(f"- {m}: {why}\n" for m, why in sorted(skipped.items()))
    return text, passed, total


def default_folders() -> list[Path]:
    folders = [ROOT / "fixtures", ROOT / "fixtures" / "edge", ROOT / "fixtures" / "arch"]
    real = ROOT.parent / "shared" / "real-models"
    return folders + ([real] if real.is_dir() else [])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", action="append", type=Path, default=[],
                        help="also use the runtimes installed in this venv (repeat)")
    parser.add_argument("--fixtures", action="append", type=Path,
                        help="folder of .onnx models (default: fixtures/, fixtures/edge, "
                             "fixtures/arch and ../shared/real-models when present)")
    parser.add_argument("--runtime", action="append", choices=list(RUNTIMES),
                        help="only these runtimes (default: every one installed)")
    parser.add_argument("--model", action="append", help="only rows whose name has this")
    parser.add_argument("--jobs", type=int, default=1, help="runtimes run at once (default 1)")
    parser.add_argument("--out", type=Path, help="also write the markdown table here")
    parser.add_argument("--multinomial", choices=["inverse-cdf", "gumbel"],
                        default="inverse-cdf", help="Multinomial's rewrite form")
    args = parser.parse_args(argv)
    models = sorted(p for f in args.fixtures or default_folders() for p in f.glob("*.onnx"))
    models = [p for p in models if not args.model or any(m in label(p) for m in args.model)]
    where = {r: p for r, p in pythons(args.venv).items() if not args.runtime or r in args.runtime}
    if not where:
        print("no target runtime installed (pip install -e '.[targets]', or --venv)",
              file=sys.stderr)
        return 2
    columns = [r for r in RUNTIMES if r in where]
    with tempfile.TemporaryDirectory(prefix="onnxfix-targets-") as tmp:
        work = Path(tmp)
        cases, skipped = prepare(models, work, args.multinomial,
                                 twins=any(r in runners.ONE_SAMPLE for r in columns))
        with ThreadPoolExecutor(max_workers=max(args.jobs, 1)) as pool:
            done = {r: pool.submit(run_runtime, where[r], r, cases, work) for r in columns}
            by_runtime = {r: future.result() for r, future in done.items()}
    cells = {c.row: {r: by_runtime[r][n] for r in columns} for n, c in cases.items()}
    text, passed, total = table(cells, skipped, columns)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0 if passed == total else 1


if __name__ == "__main__":
    sys.exit(main())
