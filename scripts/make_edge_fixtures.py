"""Generate the issue-14 edge fixtures in fixtures/edge/ and their MANIFEST.md.

Two kinds of model, each small (< 3 MB, most a few KB):
- torch-made (scripts/edge_torch_models.py; torch and onnxscript are needed only here): Piper-style
  VITS with a `scales` input, DDPM/DDIM samplers (unrolled and as a scripted Loop), LLM sampling
  heads, a GAN generator, StyleGAN-like noise, a Bayesian linear layer, MC-dropout;
- hand-made (scripts/edge_graphs.py: onnx.parser / onnx.helper, legal graphs that pass
  `onnx.checker.check_model(full_check=True)`): Loop-varying draw shapes, an If inside a Scan,
  old opsets, NaN outputs, 0-d draws, dead draws, local functions and the like.

Run:
    python scripts/make_edge_fixtures.py [--out fixtures/edge] [--only NAME ...]
(scripts/make_fixtures.py runs it too.) Every torch model is built right after
`torch.manual_seed(<fixed seed>)`, so the files are the same from run to run.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))

import edge_graphs  # noqa: E402
from make_fixtures import RANDOM_OPS, make_self_contained  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
MAX_FILE_BYTES = 3 * 1024 * 1024


@dataclass
class TorchSpec:
    """One torch export: which module, how it is exported and what it exercises."""

    name: str
    factory: str  # class name in edge_torch_models
    exporter: str  # "ts" (traced), "script" (torch.jit.script, TorchScript exporter) or "dynamo"
    inputs: Callable[[], tuple]
    input_names: tuple[str, ...]
    exercises: str
    dynamic: dict[str, dict[int, str]] = field(default_factory=dict)
    output_names: tuple[str, ...] = ("y",)
    seed: int = 0
    training: bool = False


def _torch_specs() -> list[TorchSpec]:
    import torch

    def ids():
        return (torch.tensor([[1, 5, 3, 7, 2, 9], [4, 4, 8, 1, 0, 6]]),
                torch.tensor([0.667, 1.0, 0.8]))

    def cond():
        return (torch.randn(2, 2, 4, 4, generator=torch.Generator().manual_seed(1)),)

    def logits(vocab, dtype=torch.float32):
        return lambda: (torch.randn(2, vocab, generator=torch.Generator().manual_seed(2))
                        .to(dtype),)

    vits_dyn = {"ids": {0: "batch", 1: "phonemes"}}
    batch = {0: "batch"}
    specs = [
        TorchSpec("vits_scales_ts", "PiperVits", "ts", ids, ("ids", "scales"),
                  "Piper VITS: duration noise * noise_w, frames data-dependent, flow noise "
                  "* noise_scale", vits_dyn, seed=1),
        TorchSpec("vits_scales_dynamo", "PiperVits", "dynamo", ids, ("ids", "scales"),
                  "", vits_dyn, seed=1),
        TorchSpec("ddpm_unrolled_ts", "DdpmUnrolled", "ts", cond, ("cond",),
                  "DDPM, 4 steps unrolled: 4 independent draws", {"cond": batch}, seed=2),
        TorchSpec("ddpm_unrolled_dynamo", "DdpmUnrolled", "dynamo", cond, ("cond",),
                  "", {"cond": batch}, seed=2),
        TorchSpec("ddim_unrolled_ts", "DdimUnrolled", "ts", cond, ("cond",),
                  "DDIM eta=0.5, 3 steps unrolled", {"cond": batch}, seed=3),
        TorchSpec("ddpm_loop_script", "DdpmLoop", "script",
                  lambda: (cond()[0], torch.tensor([0.9, 0.5, 0.2])), ("cond", "timesteps"),
                  "DDPM as a real Loop, trip count Shape(timesteps)[0], a draw per iteration",
                  {"cond": batch, "timesteps": {0: "steps"}}, seed=4),
        TorchSpec("ddim_loop_script", "DdimLoop", "script",
                  lambda: (cond()[0], torch.tensor([0.5, 1.5, 2.5, 4.0])), ("cond", "alpha_bars"),
                  "DDIM eta=0.5 as a real Loop over alpha_bars, a draw per iteration",
                  {"cond": batch, "alpha_bars": {0: "steps"}}, seed=11),
        TorchSpec("topk_32k_ts", "TopK", "ts", logits(32000), ("logits",),
                  "top-k (k=50) sampling head, 32,000-token vocabulary", {"logits": batch}),
        TorchSpec("topp_32k_ts", "TopP", "ts", logits(32000), ("logits",),
                  "top-p (0.9) sampling head, 32,000-token vocabulary", {"logits": batch}),
        TorchSpec("multinomial_50k_fp32_ts", "SampleVocab", "ts", logits(50257), ("logits",),
                  "Multinomial over 50,257 classes, float32 logits", {"logits": batch}),
        TorchSpec("multinomial_50k_fp16_ts", "SampleVocab", "ts",
                  logits(50257, torch.float16), ("logits",),
                  "Multinomial over 50,257 classes, float16 logits", {"logits": batch}),
        TorchSpec("autoregressive_loop_script", "AutoregressiveSampler", "script",
                  lambda: (torch.tensor([[3], [7]]), torch.tensor(4)), ("start", "steps"),
                  "autoregressive sampling Loop: Multinomial inside a Loop body",
                  {"start": batch}, seed=5),
        TorchSpec("gan_ts", "GanGenerator", "ts", lambda: (torch.eye(4)[:2],), ("label",),
                  "GAN generator drawing its latent randn(batch, 16)", {"label": batch}, seed=6),
        TorchSpec("gan_dynamo", "GanGenerator", "dynamo", lambda: (torch.eye(4)[:2],),
                  ("label",), "", {"label": batch}, seed=6),
        TorchSpec("stylegan_noise_ts", "StyleNoise", "ts",
                  lambda: (torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(3)),),
                  ("x",), "per-layer noise randn(batch, 1, H, W), H and W doubling",
                  {"x": batch}, seed=7),
        TorchSpec("stylegan_noise_dynamo", "StyleNoise", "dynamo",
                  lambda: (torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(3)),),
                  ("x",), "", {"x": batch}, seed=7),
        TorchSpec("bayesian_linear_ts", "BayesianLinear", "ts",
                  lambda: (torch.randn(3, 10, generator=torch.Generator().manual_seed(4)),),
                  ("x",), "mu + softplus(rho) * randn_like(mu) for weight and bias",
                  {"x": batch}, seed=8),
        TorchSpec("bayesian_linear_dynamo", "BayesianLinear", "dynamo",
                  lambda: (torch.randn(3, 10, generator=torch.Generator().manual_seed(4)),),
                  ("x",), "", {"x": batch}, seed=8),
        TorchSpec("mc_dropout_loop_script", "McDropout", "script",
                  lambda: (torch.randn(3, 10, generator=torch.Generator().manual_seed(5)),
                           torch.tensor(5)), ("x", "passes"),
                  "MC-dropout: F.dropout(training=True) inside a scripted Loop",
                  {"x": batch}, seed=9, training=True),
        TorchSpec("fp16_draw_to_fp32_ts", "Fp16DrawToFloat", "ts",
                  lambda: (torch.randn(3, 10, generator=torch.Generator().manual_seed(6)),),
                  ("x",), "(mu.half() + randn_like(mu.half()) * s).float(): float16 draw, "
                  "float32 output", {"x": batch}, seed=10),
    ]
    described = {s.factory: s.exercises for s in specs if s.exporter != "dynamo"}
    for spec in specs:
        if spec.exporter == "dynamo":
            spec.exercises = f"{described[spec.factory]} (dynamo exporter)"
    return specs


def _export_torch(spec: TorchSpec, path: Path) -> str:
    """Export one torch spec to `path`; returns a one-line description of how."""
    import edge_torch_models
    import torch

    torch.manual_seed(spec.seed)
    module = getattr(edge_torch_models, spec.factory)()
    module.train(spec.training)
    args = spec.inputs()
    if spec.exporter == "dynamo":
        dims = {d: torch.export.Dim(d, min=2, max=4096)
                for axes in spec.dynamic.values() for d in axes.values()}
        shapes = {n: {a: dims[d] for a, d in spec.dynamic.get(n, {}).items()}
                  for n in spec.input_names}
        torch.onnx.export(module, args, str(path), dynamo=True, opset_version=18,
                          input_names=list(spec.input_names),
                          output_names=list(spec.output_names), dynamic_shapes=shapes,
                          external_data=False, optimize=True)
        how = "torch.onnx.export(dynamo=True), opset 18"
    else:
        target = torch.jit.script(module) if spec.exporter == "script" else module
        axes = {**spec.dynamic, **{o: {0: "batch"} for o in spec.output_names}}
        kwargs = {}
        if spec.training:
            kwargs = dict(training=torch.onnx.TrainingMode.TRAINING, do_constant_folding=False)
        torch.onnx.export(target, args, str(path), dynamo=False, opset_version=17,
                          input_names=list(spec.input_names),
                          output_names=list(spec.output_names), dynamic_axes=axes, **kwargs)
        how = ("torch.jit.script + torch.onnx.export(dynamo=False), opset 17"
               if spec.exporter == "script" else "torch.onnx.export(dynamo=False), opset 17")
    make_self_contained(path)
    return how


@dataclass
class Record:
    name: str
    how: str
    exercises: str
    opset: int = 0
    random_ops: list[str] = field(default_factory=list)
    size: int = 0
    error: str = ""


def _random_ops(model: onnx.ModelProto) -> list[str]:
    found = []

    def walk(nodes):
        for node in nodes:
            if node.op_type in RANDOM_OPS:
                found.append(node.op_type)
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    walk(attr.g.node)
                for g in attr.graphs:
                    walk(g.node)

    walk(model.graph.node)
    for function in model.functions:
        walk(function.node)
    return found


def _describe(record: Record, path: Path) -> Record:
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    record.opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    record.random_ops = _random_ops(model)
    record.size = path.stat().st_size
    if record.size > MAX_FILE_BYTES:
        raise RuntimeError(f"{path.name} is {record.size} bytes, over {MAX_FILE_BYTES}")
    return record


def _quiet(fn: Callable[[], str]) -> str:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn()


def build_torch(out: Path, only: set[str] | None) -> list[Record]:
    records = []
    for spec in _torch_specs():
        if only and spec.name not in only:
            continue
        path = out / f"{spec.name}.onnx"
        record = Record(spec.name, "", spec.exercises)
        try:
            record.how = _quiet(lambda spec=spec, path=path: _export_torch(spec, path))
            _describe(record, path)
        except Exception as exc:  # noqa: BLE001 - an export failure is reported, not fatal
            record.error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}"
            path.unlink(missing_ok=True)
        records.append(record)
    return records


def build_graphs(out: Path, only: set[str] | None) -> list[Record]:
    records = []
    for name, (builder, exercises) in edge_graphs.GRAPHS.items():
        if only and name not in only:
            continue
        path = out / f"{name}.onnx"
        model = builder()
        onnx.checker.check_model(model, full_check=True)
        onnx.save_model(model, str(path))
        record = Record(name, "hand-made (onnx.parser / onnx.helper)", exercises)
        records.append(_describe(record, path))
    return records


def write_manifest(records: list[Record], out: Path) -> None:
    import onnxruntime
    import torch

    lines = [
        "# Edge fixtures (issue 14)", "",
        f"Generated by `python scripts/make_edge_fixtures.py` with torch {torch.__version__}, "
        f"onnx {onnx.__version__}, onnxruntime {onnxruntime.__version__}. Do not edit by hand. "
        "Every file passes `onnx.checker.check_model(full_check=True)`; tests live in "
        "`tests/test_edge_models.py`.", "",
        "| file | how made | opset | random ops | what it exercises |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in sorted(records, key=lambda r: r.name):
        if r.error:
            lines.append(f"| `{r.name}.onnx` (not made) | {r.how} | | | {r.error} |")
            continue
        ops = ", ".join(f"{op} x{r.random_ops.count(op)}" if r.random_ops.count(op) > 1 else op
                        for op in dict.fromkeys(r.random_ops))
        lines.append(f"| `{r.name}.onnx` | {r.how} | {r.opset} | {ops} | {r.exercises} |")
    (out / "MANIFEST.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "fixtures" / "edge")
    parser.add_argument("--only", nargs="*", default=None, help="only build these names")
    parser.add_argument("--no-torch", action="store_true", help="only the hand-made graphs")
    args = parser.parse_args(argv)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    args.out.mkdir(parents=True, exist_ok=True)
    only = set(args.only) if args.only else None
    records = build_graphs(args.out, only)
    if not args.no_torch:
        records += build_torch(args.out, only)
    for r in records:
        status = f"FAILED {r.error}" if r.error else f"ok {r.size} B {r.random_ops}"
        print(f"{r.name}: {status}")
    if only is None and not args.no_torch:
        write_manifest(records, args.out)
    return 1 if any(r.error for r in records) else 0


if __name__ == "__main__":
    sys.exit(main())
