"""Run every fixture's rewrite on each installed deployment runtime; compare with onnxruntime.

    python scripts/targets.py [--fixtures DIR]... [--out TABLE.md]

For each model: rewrite it (input-noise, every symbolic dim fixed to 2 so runtimes that need
static shapes can compile it), feed seeded inputs and seeded standard noise, run it in
onnxruntime, then convert and run it twice on every runtime installed in this Python:

- OpenVINO (`openvino`, CPU, f32 inference precision),
- tract (`tract`),
- MNN (`mnn`: converted with the `_tools.mnnconvert` extension, never the `mnnconvert`
  wrapper or `MNN.tools`, whose logger uploads usage to a remote service),
- onnx2torch (`onnx2torch`, PyTorch eager).

A cell reads `ok (max abs diff)` when both runs are identical and match onnxruntime (floats
within 1e-4 abs + 1e-4 rel, float16 within 2e-3 + 2e-3, integers exactly), else what failed.
The markdown table is printed (and written with --out); the README quotes it as printed.
Install the runtimes into a separate venv, not the shared site:
`python -m venv --system-site-packages VENV && VENV/bin/pip install -e '.[targets]' onnx2torch`.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import onnxfix  # noqa: E402

# (atol, rtol) by output dtype: float16 outputs may differ by one step of an intermediate
# (onnxruntime rounds each float16 op, others compute in float32 and round once)
TOLERANCE = {np.dtype(np.float16): (2e-3, 2e-3)}
DEFAULT_TOLERANCE = (1e-4, 1e-4)
Runner = Callable[[dict], dict]


def rewritten(path: Path, folder: Path) -> tuple[Path, onnx.ModelProto]:
    """The input-noise rewrite of `path` with every symbolic dim fixed to 2."""
    model = onnx.load(path)
    dims = {d.dim_param: 2 for i in model.graph.input
            for d in i.type.tensor_type.shape.dim if d.dim_param}
    out = folder / path.name
    new, _ = onnxfix.rewrite(model, dims=dims, check=False, output=out)
    return out, new


def feeds_for(model: onnx.ModelProto, seed: int = 0) -> dict:
    """Seeded data inputs (floats in [0, 1): valid probabilities too) and standard noise."""
    rng = np.random.default_rng(seed)
    noise = onnxfix.noise_feeds(model, seed=seed)
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
        if np.issubdtype(dtype, np.floating):
            feeds[i.name] = rng.random(shape).astype(dtype)
        elif dtype == np.bool_:
            feeds[i.name] = rng.random(shape) < 0.5
        else:
            feeds[i.name] = rng.integers(0, 2, shape).astype(dtype)
    return feeds


def output_names(model: onnx.ModelProto) -> list[str]:
    return [o.name for o in model.graph.output]


def input_names(model: onnx.ModelProto) -> list[str]:
    known = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in known]


# -- the runtimes: each turns (file, model, scratch folder) into a runner -------------------

def _onnxruntime(path: Path, model: onnx.ModelProto, scratch: Path) -> Runner:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = output_names(model)
    return lambda feeds: dict(zip(names, sess.run(names, feeds), strict=True))


def _openvino(path: Path, model: onnx.ModelProto, scratch: Path) -> Runner:
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    names = output_names(model)

    def run(feeds: dict) -> dict:
        result = compiled(feeds)
        return {n: np.asarray(result[compiled.output(n)]) for n in names}
    return run


def _tract(path: Path, model: onnx.ModelProto, scratch: Path) -> Runner:
    import tract

    runnable = tract.onnx().load(str(path)).into_model().into_runnable()
    ins, outs = input_names(model), output_names(model)

    def run(feeds: dict) -> dict:
        got = runnable.run([np.ascontiguousarray(feeds[n]) for n in ins])
        return {n: t.to_numpy() for n, t in zip(outs, got, strict=True)}
    return run


def _mnn(path: Path, model: onnx.ModelProto, scratch: Path) -> Runner:
    with _quiet():  # the converter prints its progress on the process's stdout
        import _tools  # MNN's converter extension; MNN.tools.mnnconvert would log remotely
        import MNN

        target = scratch / (path.stem + ".mnn")
        _tools.mnnconvert(["mnnconvert", "-f", "ONNX", "--modelFile", str(path),
                           "--MNNModel", str(target), "--bizCode", "onnxfix"])
    if not target.exists():
        raise RuntimeError("mnnconvert wrote no model")
    ins, outs = input_names(model), output_names(model)
    net = MNN.nn.load_module_from_file(str(target), ins, outs)

    def run(feeds: dict) -> dict:
        args = [MNN.numpy.array(feeds[n]) for n in ins]
        got = net.forward(args)
        return {n: np.array(v.read()) for n, v in zip(outs, got, strict=True)}
    return run


def _onnx2torch(path: Path, model: onnx.ModelProto, scratch: Path) -> Runner:
    import torch
    from onnx2torch import convert

    module = convert(onnx.load(path)).eval()
    ins, outs = input_names(model), output_names(model)

    def run(feeds: dict) -> dict:
        with torch.no_grad():
            got = module(*[torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in ins])
        got = got if isinstance(got, (tuple, list)) else [got]
        return {n: t.numpy() for n, t in zip(outs, got, strict=True)}
    return run


@contextlib.contextmanager
def _quiet():
    """Silence file descriptor 1 (native code writes there, not to sys.stdout)."""
    sys.stdout.flush()
    saved = os.dup(1)
    with open(os.devnull, "w") as sink:
        os.dup2(sink.fileno(), 1)
        try:
            yield
        finally:
            os.dup2(saved, 1)
            os.close(saved)


RUNTIMES: dict[str, tuple[str, Callable]] = {
    "OpenVINO": ("openvino", _openvino),
    "tract": ("tract", _tract),
    "MNN": ("MNN", _mnn),
    "onnx2torch": ("onnx2torch", _onnx2torch),
}


def installed() -> dict[str, Callable]:
    found = {}
    for label, (module, make) in RUNTIMES.items():
        try:
            with _quiet():  # MNN prints the CPU features it found
                importlib.import_module(module)
        except Exception:  # noqa: BLE001 - absent or broken: not a target here
            continue
        found[label] = make
    return found


# -- comparing ------------------------------------------------------------------------------

def verdict(make: Callable, path: Path, model: onnx.ModelProto, feeds: dict, want: dict,
            scratch: Path) -> tuple[bool, str]:
    """(passed, table cell) for one runtime on one rewritten model."""
    try:
        run = make(path, model, scratch)
    except Exception as e:  # noqa: BLE001 - the runtime's refusal is the finding
        return False, f"converts: no ({_short(e)})"
    try:
        first, second = run(feeds), run(feeds)
    except Exception as e:  # noqa: BLE001
        return False, f"runs: no ({_short(e)})"
    worst = 0.0
    for name, expected in want.items():
        a, b = np.asarray(first[name]), np.asarray(second[name])
        if not np.array_equal(a, b, equal_nan=np.issubdtype(a.dtype, np.floating)):
            return False, f"repeatable: no ('{name}')"
        if a.shape != expected.shape:
            return False, f"shape {list(a.shape)} != {list(expected.shape)} ('{name}')"
        if not np.issubdtype(expected.dtype, np.floating):
            if not np.array_equal(a.astype(expected.dtype), expected):
                return False, f"differs ('{name}', integers)"
            continue
        atol, rtol = TOLERANCE.get(expected.dtype, DEFAULT_TOLERANCE)
        diff = np.abs(a.astype(np.float64) - expected.astype(np.float64))
        if not np.all(diff <= atol + rtol * np.abs(expected.astype(np.float64))):
            return False, f"differs ('{name}', max {diff.max():.1e})"
        worst = max(worst, float(diff.max(initial=0.0)))
    return True, f"ok ({worst:.0e})" if worst else "ok (exact)"


def _short(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return (text[:90] + "...") if len(text) > 90 else text


def table(models: list[Path], runtimes: dict[str, Callable]) -> tuple[str, int, int]:
    """The markdown table, passed pairs, all pairs."""
    head = "| model | " + " | ".join(runtimes) + " |"
    lines = [head, "|" + "---|" * (len(runtimes) + 1)]
    passed = total = 0
    with tempfile.TemporaryDirectory(prefix="onnxfix-targets-") as tmp:
        scratch = Path(tmp)
        for path in models:
            new_path, model = rewritten(path, scratch)
            feeds = feeds_for(model)
            want = _onnxruntime(new_path, model, scratch)(feeds)
            cells = []
            for make in runtimes.values():
                ok, cell = verdict(make, new_path, model, feeds, want, scratch)
                passed, total = passed + ok, total + 1
                cells.append(cell.replace("|", "/"))
            lines.append(f"| {path.stem} | " + " | ".join(cells) + " |")
    return "\n".join(lines), passed, total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fixtures", action="append", type=Path,
                        help="folder of .onnx models (default: the repo's fixtures/)")
    parser.add_argument("--out", type=Path, help="also write the markdown table here")
    args = parser.parse_args(argv)
    folders = args.fixtures or [ROOT / "fixtures"]
    models = sorted(p for f in folders for p in f.glob("*.onnx"))
    runtimes = installed()
    if not runtimes:
        print("no target runtime installed (pip install -e '.[targets]')", file=sys.stderr)
        return 2
    text, passed, total = table(models, runtimes)
    text += f"\n\n{passed} of {total} model/runtime pairs pass.\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0 if passed == total else 1


if __name__ == "__main__":
    sys.exit(main())
