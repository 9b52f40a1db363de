"""The deployment runtimes scripts/targets.py drives: each turns (file, model, scratch folder)
into a runner, a function from feeds (input name -> array) to outputs (output name -> array).

Also a child process for scripts/targets.py, run in the Python (venv) that has the runtime; it
needs numpy, onnx and the runtime, not onnxfix (onnx2tf pins an older onnx and protobuf):

    python target_runners.py --list                      # JSON list of installed runtimes
    python target_runners.py --runtime LABEL --work DIR CASE...

For each CASE it reads DIR/CASE.onnx and DIR/CASE.feeds.npz, converts, runs twice and writes
DIR/CASE.LABEL.npz (first_i, second_i per output) or DIR/CASE.LABEL.json (the stage that failed
and why). Before each stage it writes the case and stage to DIR/LABEL.progress, so the parent
can name what a crash (a segfault in native code) or a hang interrupted.

Light ones (the `targets` extra, tested in CI): OpenVINO, tract, MNN; onnx2torch beside them.
Heavy ones, each in its own venv (README, "how to run the heavy ones"): IREE, pnnx/ncnn,
Apache TVM (relax), onnx2tf/LiteRT. None of these is sent usage data: MNN is converted through
its `_tools` extension (the `mnnconvert` wrapper and `MNN.tools` log remotely); the others have
no telemetry, and onnx2tf is never asked to quantize (its int8 calibration downloads data).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

Runner = Callable[[dict], dict]


def output_names(model: onnx.ModelProto) -> list[str]:
    return [o.name for o in model.graph.output]


def input_names(model: onnx.ModelProto) -> list[str]:
    known = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in known]


@contextlib.contextmanager
def quiet(into: Path | None = None):
    """Silence file descriptor 1 (native code writes there, not to sys.stdout), or send it
    into a file."""
    sys.stdout.flush()
    saved = os.dup(1)
    with open(into or os.devnull, "w") as sink:
        os.dup2(sink.fileno(), 1)
        try:
            yield
        finally:
            os.dup2(saved, 1)
            os.close(saved)


def contiguous(value: np.ndarray, dtype=None) -> np.ndarray:
    """C-contiguous, keeping a 0-d array 0-d (np.ascontiguousarray makes it 1-d)."""
    return np.require(np.asarray(value, dtype=dtype), requirements="C")


def _own_folder(path: Path, scratch: Path, runtime: str) -> Path:
    """A copy of the model in a folder of its own (converters write beside their input)."""
    folder = scratch / f"{path.stem}.{runtime}"
    folder.mkdir(exist_ok=True)
    copy = folder / path.name
    shutil.copyfile(path, copy)
    return copy


def _checked(cmd: list[str], cwd: Path, what: str) -> None:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        text = re.sub(r"\x1b\[[0-9;]*m", "", done.stderr or done.stdout).strip()
        how = (f"crashed (signal {-done.returncode})" if done.returncode < 0
               else f"exited {done.returncode}")
        raise RuntimeError(f"{what} {how}: {' / '.join(text.splitlines()[-2:])}")


# -- light ----------------------------------------------------------------------------------

def openvino(path: Path, model: onnx.ModelProto, scratch: Path) -> Runner:
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    names = output_names(model)
    known = {n for i in compiled.inputs for n in i.get_names()}

    def run(feeds: dict) -> dict:  # OpenVINO drops inputs nothing reads: feed the known ones
        result = compiled({k: v for k, v in feeds.items() if k in known})
        return {n: np.asarray(result[compiled.output(n)]) for n in names}
    return run


def tract(path: Path, model: onnx.ModelProto, scratch: Path) -> Runner:
    import tract as tr

    runnable = tr.onnx().load(str(path)).into_model().into_runnable()
    ins, outs = input_names(model), output_names(model)

    def run(feeds: dict) -> dict:
        got = runnable.run([contiguous(feeds[n]) for n in ins])
        return {n: t.to_numpy() for n, t in zip(outs, got, strict=True)}
    return run


def mnn(path: Path, model: onnx.ModelProto, scratch: Path) -> Runner:
    log = scratch / (path.stem + ".mnnconvert.log")
    # the converter prints its progress, and why it failed, on stdout, and writes a
    # '.__convert_external_data.bin' into the current folder: it runs in the scratch folder
    source, target = path.resolve(), (scratch / (path.stem + ".mnn")).resolve()
    with quiet(log), contextlib.chdir(scratch):
        import _tools  # MNN's converter extension; MNN.tools.mnnconvert would log remotely
        import MNN

        _tools.mnnconvert(["mnnconvert", "-f", "ONNX", "--modelFile", str(source),
                           "--MNNModel", str(target), "--bizCode", "onnxfix"])
    if not target.exists():  # e.g. "[16:44:11] :220: These Op Not Support: ONNX::IsNaN"
        why = [re.sub(r"^\[[\d:]+\] :\d+: ", "", line).strip()
               for line in log.read_text(errors="replace").splitlines() if "Not Support" in line]
        raise RuntimeError(f"mnnconvert wrote no model{': ' + why[-1] if why else ''}")
    ins, outs = input_names(model), output_names(model)
    net = MNN.nn.load_module_from_file(str(target), ins, outs)

    def run(feeds: dict) -> dict:
        args = [MNN.numpy.array(feeds[n]) for n in ins]
        got = net.forward(args)
        return {n: np.array(v.read()) for n, v in zip(outs, got, strict=True)}
    return run


def onnx2torch(path: Path, model: onnx.ModelProto, scratch: Path) -> Runner:
    import torch
    from onnx2torch import convert

    module = convert(onnx.load(path)).eval()
    ins, outs = input_names(model), output_names(model)

    def run(feeds: dict) -> dict:
        with torch.no_grad():
            got = module(*[torch.from_numpy(contiguous(feeds[n])) for n in ins])
        got = got if isinstance(got, (tuple, list)) else [got]
        return {n: t.numpy() for n, t in zip(outs, got, strict=True)}
    return run


# -- heavy ----------------------------------------------------------------------------------

def iree(path: Path, model: onnx.ModelProto, scratch: Path) -> Runner:
    """iree-import-onnx, then iree-compile for llvm-cpu (host CPU), run on local-task."""
    import iree.compiler as ic
    import iree.runtime as ir

    copy = _own_folder(path, scratch, "iree")
    mlir = copy.with_suffix(".mlir")
    _checked([sys.executable, "-m", "iree.compiler.tools.import_onnx", str(copy), "-o",
              str(mlir)], copy.parent, "iree-import-onnx")
    function = re.search(r'func\.func @"?([^"(]+)"?\(', mlir.read_text()).group(1)
    vmfb = copy.with_suffix(".vmfb")
    try:
        ic.compile_file(str(mlir), output_file=str(vmfb), input_type="onnx",
                        target_backends=["llvm-cpu"],
                        # float64 stays float64 (the default demotes it to float32,
                        # and the float64 inputs fed then read as garbage)
                        extra_args=["--iree-llvmcpu-target-cpu=host",
                                    "--iree-input-demote-f64-to-f32=false"])
    except ic.CompilerToolError as e:  # the diagnostics start with paths: keep the error
        found = re.search(r"error: (.*)", str(e))
        raise RuntimeError(found.group(1) if found else str(e)) from None
    module = ir.load_vm_flatbuffer_file(str(vmfb), driver="local-task")
    ins, outs = input_names(model), output_names(model)

    def run(feeds: dict) -> dict:
        got = module[function](*[contiguous(feeds[n]) for n in ins])
        got = got if isinstance(got, (tuple, list)) else [got]
        return {n: np.asarray(t.to_host()) for n, t in zip(outs, got, strict=True)}
    return run


def ncnn(path: Path, model: onnx.ModelProto, scratch: Path) -> Runner:
    """pnnx converts the ONNX model to ncnn's param/bin; ncnn runs it in float32. ncnn has no
    batch axis (pnnx drops a leading 1): a model with a batch-1 twin (scripts/targets.py
    writes N.batch1.onnx) whose every input and output leads with the batch runs one sample at
    a time, the results stacked; else the whole tensors go in. An output takes the reference's
    shape (N.outputs.json, else the declared one) when its element count matches."""
    single = path.with_name(f"{path.stem}.batch1.onnx")
    twin = onnx.load(single, load_external_data=False) if single.exists() else None
    shapes = output_shapes(path, model)
    ins = input_names(model)
    batch = twin is not None and batch_size(model, twin, shapes)
    if not batch:
        extract = _ncnn_net(path, scratch)
        return lambda feeds: {n: _reshaped(v, shapes[n]) for n, v in zip(
            shapes, extract([feeds[n] for n in ins]), strict=True)}
    extract = _ncnn_net(single, scratch)

    def run(feeds: dict) -> dict:
        samples = [extract([feeds[n][b] for n in ins]) for b in range(batch)]
        return {n: np.concatenate([_reshaped(s[k], [1, *shapes[n][1:]]) for s in samples])
                for k, n in enumerate(shapes)}
    return run


ONE_SAMPLE = {"ncnn (pnnx)"}  # runtimes given a batch-1 twin (scripts/targets.py)


def output_shapes(path: Path, model: onnx.ModelProto) -> dict[str, list[int]]:
    """Each output's shape as onnxruntime computed it (N.outputs.json beside N.onnx, written
    by scripts/targets.py), else as declared (0 for a symbolic dim)."""
    found = path.with_name(f"{path.stem}.outputs.json")
    if found.exists():
        return json.loads(found.read_text())
    return {o.name: [d.dim_value for d in o.type.tensor_type.shape.dim]
            for o in model.graph.output}


def batch_size(model: onnx.ModelProto, twin: onnx.ModelProto,
               outputs: dict[str, list[int]]) -> int:
    """The batch: the leading axis of every input of `model` (1 in its batch-1 `twin`, the
    other axes alike) and of every output's shape; 0 when one does not lead with it."""
    def inputs(m: onnx.ModelProto) -> list[list[int]]:
        known = {t.name for t in m.graph.initializer}
        return [[d.dim_value for d in i.type.tensor_type.shape.dim]
                for i in m.graph.input if i.name not in known]
    whole, one = inputs(model), inputs(twin)
    if not whole or len(whole) != len(one) or len(twin.graph.output) != len(outputs):
        return 0
    if not all(w and o and o[0] == 1 and w[1:] == o[1:] and all(o)
               for w, o in zip(whole, one, strict=True)):
        return 0
    sizes = {w[0] for w in whole} | {s[0] if s else 0 for s in outputs.values()}
    return sizes.pop() if len(sizes) == 1 else 0


def _reshaped(value: np.ndarray, want: list[int]) -> np.ndarray:
    """ncnn's output in the reference's shape when the element count matches (it drops the
    batch axis and keeps at most 4 axes)."""
    return value.reshape(want) if all(want) and value.size == int(np.prod(want)) else value


def _ncnn_net(path: Path, scratch: Path) -> Callable[[list], list]:
    """pnnx's conversion of `path` loaded in ncnn, as a function from the inputs (graph order)
    to the outputs (graph order), float32 throughout."""
    import ncnn as nc
    import pnnx

    copy = _own_folder(path, scratch, "ncnn")
    # fp16=0: pnnx stores the weights as float16 by default, which moved plain models'
    # outputs by 1.5e-4 to 2.6e-4 from onnxruntime's
    _checked([pnnx.EXEC_PATH, copy.name, "fp16=0"], copy.parent, "pnnx")
    param, weights = copy.with_suffix(".ncnn.param"), copy.with_suffix(".ncnn.bin")
    net = nc.Net()
    net.opt.num_threads = 1
    # float32 throughout: ncnn stores and computes in float16 / bfloat16 where the CPU can
    net.opt.use_fp16_packed = net.opt.use_fp16_storage = net.opt.use_fp16_arithmetic = False
    net.opt.use_bf16_storage = False
    if net.load_param(str(param)) != 0 or net.load_model(str(weights)) != 0:
        layers = {line.split()[0] for line in param.read_text().splitlines()[2:] if line.strip()}
        missing = sorted(t for t in layers if nc.create_layer(t) is None)  # absent or not built
        raise RuntimeError(f"ncnn has no layer {', '.join(missing)}" if missing
                           else "ncnn cannot load the converted model")
    outputs = len(onnx.load(path, load_external_data=False).graph.output)

    def extract(values: list) -> list:
        ex = net.create_extractor()
        # the extractor keeps pointers into the Mats (and they into the arrays): both must
        # outlive the extraction, else ncnn reads freed memory (a segfault, or wrong values)
        # a 0-d input goes in as one element (a 0-d Mat cannot be made: pybind11's
        # "factory function returned nullptr")
        arrays = [contiguous(v, dtype=np.float32).reshape(np.shape(v) or (1,))
                  for v in values]
        mats = [nc.Mat(a).clone() for a in arrays]
        for i, mat in enumerate(mats):
            ex.input(f"in{i}", mat)
        result = []
        for i in range(outputs):
            status, mat = ex.extract(f"out{i}")
            if status != 0:
                raise RuntimeError(f"ncnn extract out{i} returned {status}")
            result.append(np.array(mat))
        return result
    return extract


def tvm(path: Path, model: onnx.ModelProto, scratch: Path) -> Runner:
    """Apache TVM relax: from_onnx, compiled for the host CPU by LLVM, run in the relax VM."""
    import tvm as tv
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    mod = from_onnx(onnx.load(path), keep_params_in_input=False)
    mod = relax.transform.DecomposeOpsForInference()(mod)
    vm = relax.VirtualMachine(tv.compile(mod, target="llvm"), tv.cpu())
    ins, outs = input_names(model), output_names(model)

    def run(feeds: dict) -> dict:
        got = vm["main"](*[tv.runtime.tensor(contiguous(feeds[n])) for n in ins])
        got = list(got) if not hasattr(got, "numpy") else [got]
        return {n: t.numpy() for n, t in zip(outs, got, strict=True)}
    return run


def litert(path: Path, model: onnx.ModelProto, scratch: Path) -> Runner:
    """onnx2tf converts to a float32 .tflite, LiteRT's interpreter runs it. 4-D inputs go
    channels-last, as onnx2tf converts them by default (kept NCHW, a [B, 1, H, W] noise input
    was broadcast against the NHWC feature map along H: StyleGAN's noise differed by 1.4e-1),
    the others keep their shape; a 4-D output onnx2tf left channels-last is transposed back
    when that gives ORT's shape."""
    import onnx2tf
    import onnx2tf.onnx2tf as converter
    from ai_edge_litert.interpreter import Interpreter

    # onnx2tf downloads sample images from the network to validate models whose inputs all look
    # like NHWC images: hand it local zeros instead (it never reaches the network)
    converter.download_test_image_data = lambda: np.zeros((20, 128, 128, 3), np.float32)
    copy = _own_folder(path, scratch, "litert")
    ins, outs = input_names(model), output_names(model)
    ranks = {i.name: len(i.type.tensor_type.shape.dim) for i in model.graph.input}
    nhwc = {n for n in ins if ranks[n] == 4}
    with quiet():
        onnx2tf.convert(input_onnx_file_path=str(copy), output_folder_path=str(copy.parent / "tf"),
                        non_verbose=True, copy_onnx_input_output_names_to_tflite=True,
                        keep_shape_absolutely_input_names=[n for n in ins if n not in nhwc]
                        or None)
    flat = sorted((copy.parent / "tf").glob("*_float32.tflite"))
    if not flat:
        raise RuntimeError("onnx2tf wrote no float32 .tflite")
    signature, wanted = _tflite_runner(Interpreter(model_path=str(flat[0])))
    shapes = output_shapes(path, model)
    constants = _constant_outputs(model)

    def fed(value: np.ndarray, name: str) -> np.ndarray:
        value = np.asarray(value).transpose(0, 2, 3, 1) if name in nhwc else np.asarray(value)
        return contiguous(value.astype(wanted.get(_tf_name(name), value.dtype)))

    def run(feeds: dict) -> dict:
        got = signature(**{_tf_name(n): fed(feeds[n], n) for n in ins})
        by_name = {_tf_name(k): v for k, v in got.items()}
        computed = [n for n in outs if n not in constants]
        values = ([by_name[_tf_name(n)] for n in computed]
                  if all(_tf_name(n) in by_name for n in computed) else list(got.values()))
        if len(values) != len(computed):
            raise RuntimeError(f"the .tflite has {len(values)} outputs, the model "
                               f"{len(computed)} computed ones")
        result = {n: _channels_first(np.asarray(v), shapes[n])
                  for n, v in zip(computed, values, strict=True)}
        return {n: result[n] if n in result else constants[n] for n in outs}
    return run


def _tflite_runner(interpreter) -> tuple[Callable[..., dict], dict]:
    """A function from inputs (by name) to outputs (by name), and each input's dtype (onnx2tf
    makes float16 inputs float32 ones: each is fed in the interpreter's dtype). Through the
    model's signature, or, when onnx2tf wrote none (ConvNeXt), through its tensors in order."""
    if interpreter.get_signature_list():
        signature = interpreter.get_signature_runner()
        return signature, {k: d["dtype"] for k, d in signature.get_input_details().items()}
    interpreter.allocate_tensors()
    ins, outs = interpreter.get_input_details(), interpreter.get_output_details()

    def run(**feeds) -> dict:
        for d in ins:
            interpreter.set_tensor(d["index"], feeds[d["name"]])
        interpreter.invoke()
        return {d["name"]: interpreter.get_tensor(d["index"]) for d in outs}
    return run, {d["name"]: d["dtype"] for d in ins}


def _constant_outputs(model: onnx.ModelProto) -> dict:
    """Graph outputs that are constants (an initializer, or a Constant node's value tensor):
    onnx2tf drops them from the .tflite, so their value is read off the model."""
    from onnx import numpy_helper

    found = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            found[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return {o.name: found[o.name] for o in model.graph.output if o.name in found}


def _tf_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def _channels_first(value: np.ndarray, want: list[int]) -> np.ndarray:
    if value.ndim == 4 and list(value.shape) != want:
        moved = value.transpose(0, 3, 1, 2)
        if list(moved.shape) == want:
            return moved
    return value


# label -> (module whose import says it is installed, runner factory); the table's column order
RUNTIMES: dict[str, tuple[str, Callable]] = {
    "OpenVINO": ("openvino", openvino),
    "tract": ("tract", tract),
    "MNN": ("MNN", mnn),
    "onnx2torch": ("onnx2torch", onnx2torch),
    "IREE": ("iree.compiler", iree),
    "ncnn (pnnx)": ("pnnx", ncnn),
    "TVM": ("tvm.relax", tvm),
    "LiteRT (onnx2tf)": ("onnx2tf", litert),
}


def installed(only: list[str] | None = None) -> dict[str, Callable]:
    found = {}
    for label, (module, make) in RUNTIMES.items():
        if only and label not in only:
            continue
        try:
            with quiet():  # MNN prints the CPU features it found
                importlib.import_module(module)
        except Exception:  # noqa: BLE001 - absent or broken: not a target here
            continue
        found[label] = make
    return found


def slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", label).strip("_")


def outcome(make: Callable, path: Path, model: onnx.ModelProto, feeds: dict, scratch: Path,
            progress: Callable[[str], None] = lambda stage: None) -> tuple[list, list]:
    """Both runs' outputs (in graph output order); raises Failed naming the stage."""
    progress("converts")
    try:
        run = make(path, model, scratch)
    except Exception as e:  # noqa: BLE001 - the runtime's refusal is the finding
        raise Failed("converts", e) from e
    progress("runs")
    try:
        first, second = run(feeds), run(feeds)
    except Exception as e:  # noqa: BLE001
        raise Failed("runs", e) from e
    names = output_names(model)
    return [first[n] for n in names], [second[n] for n in names]


class Failed(Exception):
    def __init__(self, stage: str, error: BaseException | str):
        text = " ".join(str(error).split()) or type(error).__name__
        super().__init__(f"{stage}: no ({text[:90] + '...' if len(text) > 90 else text})")
        self.stage = stage


def serve(label: str, work: Path, cases: list[str]) -> None:
    make = installed([label])[label]
    progress_file = work / f"{slug(label)}.progress"
    for case in cases:
        def progress(stage: str, case: str = case) -> None:
            progress_file.write_text(f"{case} {stage}")
        path = work / f"{case}.onnx"
        model = onnx.load(path, load_external_data=False)
        with np.load(work / f"{case}.feeds.npz") as data:
            feeds = {k: data[k] for k in data.files}
        scratch = work / f"{case}.{slug(label)}.scratch"
        scratch.mkdir(exist_ok=True)
        result = f"{case}.{slug(label)}"
        try:
            first, second = outcome(make, path, model, feeds, scratch, progress)
        except Failed as e:
            (work / f"{result}.json").write_text(json.dumps({"cell": str(e)}))
            continue
        arrays = {f"first_{i}": np.asarray(v) for i, v in enumerate(first)}
        arrays |= {f"second_{i}": np.asarray(v) for i, v in enumerate(second)}
        np.savez(work / f"{result}.npz", **arrays)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="child of scripts/targets.py")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--runtime")
    parser.add_argument("--work", type=Path)
    parser.add_argument("cases", nargs="*")
    args = parser.parse_args(argv)
    if args.list:
        print(json.dumps(list(installed())))
        return 0
    serve(args.runtime, args.work, args.cases)
    return 0


if __name__ == "__main__":
    sys.exit(main())
