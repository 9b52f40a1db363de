"""Generate the small ONNX fixture models used by the onnxfix test-suite.

Requires torch==2.13.0 (CPU build is enough), onnxscript (for the dynamo
exporter), onnx and onnxruntime.

Run:
    python scripts/make_fixtures.py [--out fixtures]

A full run (no --only) also runs scripts/make_edge_fixtures.py into <out>/edge.

Every model is built right after ``torch.manual_seed(<fixed seed>)`` so the
weights are identical from run to run.  Each model is exported with the
TorchScript exporter (``dynamo=False``, opset 17) and, where requested, with
the dynamo exporter (``dynamo=True``, opset 18, default ``optimize=True``).
Dynamo exports are re-saved as a single self-contained ``.onnx`` file (weights
embedded, no external ``.data`` file) and the ``pkg.torch.onnx.stack_trace``
node metadata, which contains absolute paths of the exporting machine, is
dropped so that the files do not depend on where they were generated.

After exporting, every file is checked with ``onnx.checker.check_model(...,
full_check=True)``, run once with onnxruntime (CPUExecutionProvider; batch 2
and 3 for dynamic-batch models) and summarised in ``<out>/MANIFEST.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper
from torch import nn

from onnxfix.ops import RANDOM_OP_TYPES

REPO_ROOT = Path(__file__).resolve().parent.parent
TS_OPSET = 17
DYNAMO_OPSET = 18
FEATURES = 10
EXAMPLE_BATCH = 3
MAX_FILE_BYTES = 50 * 1024

RANDOM_OPS = RANDOM_OP_TYPES

# Node metadata keys that embed machine-specific absolute paths.
STRIP_METADATA_KEYS = ("pkg.torch.onnx.stack_trace",)


# --------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------


class Ref1Static(nn.Module):
    """Reference 1: additive noise with constant mean and scale."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(FEATURES, FEATURES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear(x)
        return x + (2.0 + 0.5 * torch.randn(x.shape))


class Ref2Dynamic(nn.Module):
    """Reference 2: noise whose loc/scale are computed from the input."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(FEATURES, FEATURES)
        self.linear_s = nn.Linear(FEATURES, FEATURES)
        self.linear_l = nn.Linear(FEATURES, FEATURES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear(x)
        scale = torch.sigmoid(self.linear_s(x))
        loc = self.linear_l(x)
        return x + loc + scale * torch.randn(x.shape)


class Ref3Nested(Ref2Dynamic):
    """Reference 3: three independent draws, two of them feeding the third."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear(x)
        scale = torch.sigmoid(self.linear_s(x))
        loc = self.linear_l(x)
        sampled_scale = nn.functional.softplus(scale + torch.randn(x.shape))
        sampled_loc = loc + torch.randn(x.shape)
        return x + sampled_loc + sampled_scale * torch.randn(x.shape)


class RandnLike(nn.Module):
    """``h + randn_like(h) * 0.1``."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(FEATURES, FEATURES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.linear(x)
        return h + torch.randn_like(h) * 0.1


class RandLike(nn.Module):
    """``h + rand_like(h)`` (uniform noise)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(FEATURES, FEATURES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.linear(x)
        return h + torch.rand_like(h)


class NormalTensor(nn.Module):
    """``torch.normal(mean=h, std=sigmoid(h))``."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(FEATURES, FEATURES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.linear(x)
        return torch.normal(mean=h, std=torch.sigmoid(h))


class RandnFloat64(nn.Module):
    """``randn`` drawn in float64, affine-transformed, cast back to float32."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(FEATURES, FEATURES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.linear(x)
        noise = torch.randn(h.shape, dtype=torch.float64) * 3 + 1
        return (h.double() + noise).float()


class BernoulliModel(nn.Module):
    """``bernoulli(sigmoid(linear(x)))``."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(FEATURES, FEATURES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.bernoulli(torch.sigmoid(self.linear(x)))


class MultinomialModel(nn.Module):
    """``multinomial(softmax(linear(x)), num_samples)``."""

    def __init__(self, num_samples: int = 1, replacement: bool = False) -> None:
        super().__init__()
        self.linear = nn.Linear(FEATURES, FEATURES)
        self.num_samples = num_samples
        self.replacement = replacement

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(self.linear(x), -1)
        return torch.multinomial(probs, self.num_samples, self.replacement)


class Multinomial3(MultinomialModel):
    """Three draws per row, with replacement."""

    def __init__(self) -> None:
        super().__init__(num_samples=3, replacement=True)


class DropoutTrain(nn.Module):
    """Linear followed by ``nn.Dropout(0.3)``; exported in training mode."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(FEATURES, FEATURES)
        self.dropout = nn.Dropout(0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.linear(x))


class Mixed(nn.Module):
    """randn_like, rand_like, bernoulli and multinomial in one graph."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(FEATURES, FEATURES)
        self.linear_p = nn.Linear(FEATURES, FEATURES)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.linear(x)
        noisy = h + torch.randn_like(h) * 0.1 + torch.rand_like(h)
        mask = torch.bernoulli(torch.sigmoid(h))
        y = noisy * mask
        probs = torch.softmax(self.linear_p(x), -1)
        idx = torch.multinomial(probs, 1)
        return y, idx


# --------------------------------------------------------------------------
# Fixture specifications
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """One fixture file to produce."""

    name: str  # file stem
    factory: Callable[[], nn.Module]
    seed: int
    exporter: str  # "ts" or "dynamo"
    dynamic: bool
    output_names: tuple[str, ...] = ("y",)
    dtype: torch.dtype = torch.float32
    training: bool = False
    optional: bool = False  # failure is reported and skipped, not fatal

    @property
    def opset(self) -> int:
        return TS_OPSET if self.exporter == "ts" else DYNAMO_OPSET

    @property
    def filename(self) -> str:
        return f"{self.name}.onnx"


def build_specs() -> list[Spec]:
    specs: list[Spec] = []

    # 1-4: reference models, every (batch mode x exporter) combination.
    reference: list[tuple[str, Callable[[], nn.Module], int]] = [
        ("ref1", Ref1Static, 1),
        ("ref2", Ref2Dynamic, 2),
        ("ref3", Ref3Nested, 3),
        ("randn_like", RandnLike, 4),
    ]
    for stem, factory, seed in reference:
        for dynamic in (False, True):
            for exporter in ("ts", "dynamo"):
                mode = "dynamic" if dynamic else "static"
                specs.append(Spec(f"{stem}_{mode}_{exporter}", factory, seed, exporter, dynamic))

    # 5-11: other random ops.  TorchScript is required; dynamo is best effort.
    others: list[dict] = [
        dict(stem="rand_like", factory=RandLike, seed=5),
        dict(stem="normal", factory=NormalTensor, seed=6),
        dict(stem="randn_f64", factory=RandnFloat64, seed=61),
        dict(stem="bernoulli", factory=BernoulliModel, seed=7),
        dict(stem="multinomial", factory=MultinomialModel, seed=8),
        dict(stem="multinomial3", factory=Multinomial3, seed=81),
        dict(stem="dropout_train", factory=DropoutTrain, seed=9, training=True),
        dict(stem="mixed", factory=Mixed, seed=10, output_names=("y", "idx")),
    ]
    for other in others:
        stem = other.pop("stem")
        for exporter in ("ts", "dynamo"):
            specs.append(
                Spec(
                    f"{stem}_dynamic_{exporter}",
                    exporter=exporter,
                    dynamic=True,
                    optional=exporter == "dynamo",
                    **other,
                )
            )

    # 11: float16 model, static batch, TorchScript only.
    specs.append(
        Spec(
            "fp16_randn_like_static_ts",
            RandnLike,
            11,
            "ts",
            dynamic=False,
            dtype=torch.float16,
            optional=True,
        )
    )
    return specs


# --------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------


def _build_model(spec: Spec) -> nn.Module:
    torch.manual_seed(spec.seed)
    model = spec.factory()
    if spec.dtype == torch.float16:
        model = model.half()
    model.train(spec.training)
    return model


def _example_input(spec: Spec) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1000 + spec.seed)
    return torch.randn(EXAMPLE_BATCH, FEATURES, generator=gen).to(spec.dtype)


def export_torchscript(spec: Spec, model: nn.Module, path: Path) -> None:
    names = ("x", *spec.output_names)
    dynamic_axes = {name: {0: "batch"} for name in names} if spec.dynamic else None
    kwargs = {}
    if spec.training:
        kwargs = dict(training=torch.onnx.TrainingMode.TRAINING, do_constant_folding=False)
    torch.onnx.export(
        model,
        (_example_input(spec),),
        str(path),
        dynamo=False,
        opset_version=spec.opset,
        input_names=["x"],
        output_names=list(spec.output_names),
        dynamic_axes=dynamic_axes,
        **kwargs,
    )


def export_dynamo(spec: Spec, model: nn.Module, path: Path) -> None:
    dynamic_shapes = None
    if spec.dynamic:
        dynamic_shapes = {"x": {0: torch.export.Dim("batch", min=1, max=4096)}}
    torch.onnx.export(
        model,
        (_example_input(spec),),
        str(path),
        dynamo=True,
        opset_version=spec.opset,
        input_names=["x"],
        output_names=list(spec.output_names),
        dynamic_shapes=dynamic_shapes,
        external_data=False,
        optimize=True,
    )


def make_self_contained(path: Path) -> None:
    """Embed any external data and drop machine-specific node metadata."""
    proto = onnx.load(str(path), load_external_data=True)
    for node in _iter_nodes(proto.graph):
        keep = [p for p in node.metadata_props if p.key not in STRIP_METADATA_KEYS]
        del node.metadata_props[:]
        node.metadata_props.extend(keep)
    for tensor in proto.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            raise RuntimeError(f"{path.name}: initializer {tensor.name} still external")
    # Remove stale external data files written next to the model.
    for data_file in path.parent.glob(f"{path.name}.data*"):
        data_file.unlink()
    onnx.save_model(proto, str(path), save_as_external_data=False)


def export(spec: Spec, out_dir: Path) -> tuple[Path, str]:
    """Export ``spec``; returns the path and the exporter's captured output."""
    path = out_dir / spec.filename
    model = _build_model(spec)
    buf = io.StringIO()
    with (
        contextlib.redirect_stdout(buf),
        contextlib.redirect_stderr(buf),
        warnings.catch_warnings(record=True) as caught,
    ):
        warnings.simplefilter("always")
        if spec.exporter == "ts":
            export_torchscript(spec, model, path)
        else:
            export_dynamo(spec, model, path)
    make_self_contained(path)
    notes = buf.getvalue().strip()
    warning_lines = sorted({f"{w.category.__name__}: {w.message}" for w in caught})
    return path, "\n".join(filter(None, [notes, *warning_lines]))


# --------------------------------------------------------------------------
# Inspection
# --------------------------------------------------------------------------


def _iter_nodes(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _iter_nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _iter_nodes(sub)


def _type_str(value: onnx.ValueInfoProto) -> str:
    tensor = value.type.tensor_type
    dtype = onnx.TensorProto.DataType.Name(tensor.elem_type).lower()
    dims = [d.dim_param if d.HasField("dim_param") else str(d.dim_value) for d in tensor.shape.dim]
    return f"{value.name}: {dtype}[{', '.join(dims)}]"


def _attr_str(attr: onnx.AttributeProto) -> str:
    value = onnx.helper.get_attribute_value(attr)
    if attr.name in ("dtype", "to") and isinstance(value, int):
        value = onnx.TensorProto.DataType.Name(value)
    elif isinstance(value, float):
        value = f"{value:g}"
    elif isinstance(value, bytes):
        value = value.decode()
    elif isinstance(value, onnx.TensorProto):
        value = _tensor_str(value)
    elif isinstance(value, list):
        value = list(value)
    return f"{attr.name}={value}"


def _tensor_str(tensor: onnx.TensorProto) -> str:
    """``dtype[shape]``, followed by ``=values`` for tiny tensors."""
    array = numpy_helper.to_array(tensor)
    text = f"{array.dtype}{list(array.shape)}"
    if array.size <= 4:
        text += f"={array.tolist()}"
    return text


class GraphIndex:
    """Producer lookup used to describe what feeds a random node."""

    # Ops whose attributes are shown when describing a producer chain.
    SHOW_ATTRS = ("ConstantOfShape", "Cast")

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.producer = {out: node for node in graph.node for out in node.output}
        self.initializers = {t.name: t for t in graph.initializer}
        self.inputs = {i.name for i in graph.input}

    def describe(self, name: str, depth: int = 6) -> str:
        """Expression for ``name``, e.g. ``ConstantOfShape(Shape(x))``."""
        if not name:
            return "<none>"
        if name in self.inputs:
            return name
        if name in self.initializers:
            return f"init {name}: {_tensor_str(self.initializers[name])}"
        node = self.producer.get(name)
        if node is None:
            return name
        if node.op_type == "Constant":
            return f"Constant({', '.join(_attr_str(a) for a in node.attribute)})"
        if depth == 0:
            return f"{node.op_type}(...)"
        args = [self.describe(i, depth - 1) for i in node.input]
        if node.op_type in self.SHOW_ATTRS:
            args += [_attr_str(a) for a in node.attribute]
        return f"{node.op_type}({', '.join(args)})"


def random_nodes(proto: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in _iter_nodes(proto.graph) if n.op_type in RANDOM_OPS]


def check(path: Path) -> str | None:
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:  # noqa: BLE001 - report any checker failure
        return f"{type(exc).__name__}: {exc}"
    return None


def run_ort(path: Path, spec: Spec) -> list[str]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    np_dtype = np.float16 if spec.dtype == torch.float16 else np.float32
    results = []
    for batch in (2, 3) if spec.dynamic else (EXAMPLE_BATCH,):
        x = np.random.default_rng(batch).standard_normal((batch, FEATURES))
        outputs = session.run(None, {"x": x.astype(np_dtype)})
        shapes = ", ".join(f"{o.dtype}{list(o.shape)}" for o in outputs)
        results.append(f"batch {batch} -> {shapes}")
    return results


# --------------------------------------------------------------------------
# Manifest
# --------------------------------------------------------------------------


@dataclass
class Record:
    spec: Spec
    path: Path | None = None
    error: str | None = None
    notes: str = ""
    check_error: str | None = None
    ort_results: list[str] = field(default_factory=list)
    ort_error: str | None = None
    seconds: float = 0.0


def manifest_entry(record: Record) -> list[str]:
    spec = record.spec
    assert record.path is not None
    proto = onnx.load(str(record.path))
    index = GraphIndex(proto.graph)
    opsets = ", ".join(f"{o.domain or 'ai.onnx'}:{o.version}" for o in proto.opset_import)
    exporter = "TorchScript (dynamo=False)" if spec.exporter == "ts" else "dynamo"
    lines = [
        f"## {record.path.name}",
        "",
        f"- model: `{spec.factory.__name__}` (seed {spec.seed}"
        + (", float16" if spec.dtype == torch.float16 else "")
        + (", exported in training mode" if spec.training else "")
        + ")",
        f"- exporter: {exporter}, producer {proto.producer_name} {proto.producer_version}",
        f"- opset: {opsets}; IR version: {proto.ir_version}",
        f"- batch: {'dynamic' if spec.dynamic else 'static'}",
        f"- size: {record.path.stat().st_size} bytes, {len(proto.graph.node)} top-level nodes",
        "- inputs: " + "; ".join(f"`{_type_str(v)}`" for v in proto.graph.input),
        "- outputs: " + "; ".join(f"`{_type_str(v)}`" for v in proto.graph.output),
        f"- check_model(full_check=True): {record.check_error or 'ok'}",
        f"- onnxruntime: {record.ort_error or '; '.join(record.ort_results)}",
        "- random nodes:",
    ]
    nodes = random_nodes(proto)
    if not nodes:
        lines.append("  - (none)")
    for node in nodes:
        attrs = ", ".join(_attr_str(a) for a in node.attribute) or "no attributes"
        lines.append(f"  - `{node.op_type}` `{node.name}` ({attrs})")
        for i, name in enumerate(node.input):
            lines.append(f"    - input {i}: `{index.describe(name)}`")
        consumers = [f"{n.op_type}" for n in proto.graph.node if set(n.input) & set(node.output)]
        lines.append(f"    - consumed by: {', '.join(consumers) or '(graph output)'}")
    lines.append("")
    return lines


def write_manifest(records: list[Record], out_dir: Path) -> None:
    lines = [
        "# ONNX fixtures",
        "",
        "Generated by `python scripts/make_fixtures.py` with torch "
        f"{torch.__version__}, onnx {onnx.__version__}, onnxruntime "
        f"{ort.__version__}.  Do not edit by hand.",
        "",
        f"TorchScript exports use opset {TS_OPSET}; dynamo exports use opset "
        f"{DYNAMO_OPSET} with the default optimizer.  Dynamic-batch models name "
        "the symbolic dimension `batch`.  Node metadata key(s) "
        f"{', '.join(f'`{k}`' for k in STRIP_METADATA_KEYS)} are stripped from "
        "dynamo exports (they contain absolute paths).",
        "",
        "| file | exporter | opset | batch | random nodes |",
        "| --- | --- | --- | --- | --- |",
    ]
    produced = [r for r in records if r.path is not None]
    for record in produced:
        proto = onnx.load(str(record.path))
        ops = ", ".join(n.op_type for n in random_nodes(proto)) or "-"
        mode = "dynamic" if record.spec.dynamic else "static"
        lines.append(
            f"| `{record.path.name}` | {record.spec.exporter} | "
            f"{record.spec.opset} | {mode} | {ops} |"
        )
    lines.append("")
    skipped = [r for r in records if r.path is None]
    if skipped:
        lines += ["## Skipped variants", ""]
        for record in skipped:
            lines.append(f"- `{record.spec.filename}`: {record.error}")
        lines.append("")
    for record in produced:
        lines += manifest_entry(record)
    (out_dir / "MANIFEST.md").write_text("\n".join(lines).rstrip() + "\n")


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------


def _first_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else text


def process(spec: Spec, out_dir: Path, verbose: bool) -> Record:
    record = Record(spec)
    start = time.perf_counter()
    try:
        record.path, record.notes = export(spec, out_dir)
    except Exception as exc:  # noqa: BLE001 - exporter failures are reported
        record.error = f"{type(exc).__name__}: {_first_line(str(exc))}"
        for stale in out_dir.glob(f"{spec.filename}*"):
            stale.unlink()
        if verbose:
            traceback.print_exc()
        record.seconds = time.perf_counter() - start
        return record
    record.check_error = check(record.path)
    try:
        record.ort_results = run_ort(record.path, spec)
    except Exception as exc:  # noqa: BLE001 - runtime failures are reported
        record.ort_error = f"{type(exc).__name__}: {_first_line(str(exc))}"
    record.seconds = time.perf_counter() - start
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO_ROOT / "fixtures",
        help="output directory (default: <repo>/fixtures)",
    )
    parser.add_argument("--only", nargs="*", default=None, help="only build these file stems")
    parser.add_argument("-v", "--verbose", action="store_true", help="print exporter output")
    parser.add_argument("--set", choices=("base", "arch", "all"), default="base",
                        help="base: the op fixtures in <out>; arch: the real-architecture "
                        "fixtures in <out>/arch (scripts/fixtures_arch.py); all: both")
    args = parser.parse_args(argv)
    if not args.verbose:
        # The dynamo exporter logs e.g. "torchvision is not installed" per export.
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    out_dir: Path = args.out
    out_dir.mkdir(parents=True, exist_ok=True)
    arch_status = 0
    if args.set in ("arch", "all"):
        from fixtures_arch import run_arch  # needs transformers, diffusers, stable-baselines3

        arch_status = run_arch(out_dir / "arch", args.only)
        if args.set == "arch":
            return arch_status

    specs = build_specs()
    if args.only:
        specs = [s for s in specs if s.name in set(args.only)]

    started = time.perf_counter()
    records: list[Record] = []
    failed = False
    for spec in specs:
        record = process(spec, out_dir, args.verbose)
        records.append(record)
        if record.path is None:
            label = "SKIPPED" if spec.optional else "FAILED"
            failed |= not spec.optional
            print(f"{label:8} {spec.filename}: {record.error}")
            continue
        proto = onnx.load(str(record.path))
        ops = [n.op_type for n in random_nodes(proto)]
        size = record.path.stat().st_size
        status = "ok" if record.check_error is None else "CHECK-FAIL"
        if record.ort_error is not None:
            status += "/ORT-FAIL"
        print(f"{status:8} {record.path.name} ({size} B, {record.seconds:.1f}s): {ops}")
        if record.check_error:
            print(f"         check_model: {record.check_error}")
        if record.ort_error:
            print(f"         onnxruntime: {record.ort_error}")
        if size > MAX_FILE_BYTES:
            print(f"         WARNING: larger than {MAX_FILE_BYTES} bytes")
        if args.verbose and record.notes:
            print("         " + record.notes.replace("\n", "\n         "))
        failed |= record.check_error is not None or record.ort_error is not None

    if args.only is None:
        write_manifest(records, out_dir)
        print(f"wrote {out_dir / 'MANIFEST.md'}")
        # The issue-14 edge fixtures live in their own folder with their own manifest.
        import make_edge_fixtures

        failed |= make_edge_fixtures.main(["--out", str(out_dir / "edge")]) != 0
    print(f"total {time.perf_counter() - started:.1f}s")
    return 1 if failed or arch_status else 0


if __name__ == "__main__":
    sys.exit(main())
