"""The Python API behind the CLI: rewrite a model, check it, report what was done."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import onnx

from .errors import ParityError, UsageError
from .feeds import make_noise_feeds
from .find import make_selector
from .inspection import InspectReport, inspect_model
from .model_io import check_writable, load_model, save_model_atomic
from .parity import check_parity
from .report import Parity, RewriteReport, op_counts
from .rewrite import DEFAULT_MAX_DRAW_BYTES, MODES, rewrite_model

ModelLike = onnx.ModelProto | str | os.PathLike


def _load(model_or_path: ModelLike) -> tuple[onnx.ModelProto, str | None]:
    if isinstance(model_or_path, onnx.ModelProto):
        return model_or_path, None
    if isinstance(model_or_path, (str, os.PathLike)):
        return load_model(model_or_path), str(model_or_path)
    raise UsageError(f"expected an onnx.ModelProto or a path, got {type(model_or_path).__name__}")


def rewrite(model_or_path: ModelLike, mode: str = "input-noise", *, seed: int = 0,
            dims: dict[str, int] | None = None, only: list[str] | None = None,
            exclude: list[str] | None = None, noise_dtype: str = "same", check: bool = True,
            atol: float | None = None, rtol: float | None = None, check_size: int = 2,
            max_draw_bytes: int = DEFAULT_MAX_DRAW_BYTES,
            output: str | os.PathLike | None = None,
            on_line: Callable[[str], None] | None = None,
            ) -> tuple[onnx.ModelProto, RewriteReport]:
    """Rewrite every random node of a model; return the new model and the report.

    mode: "input-noise" (standard noise as new graph inputs), "constant" (seeded draws) or
        "deterministic" (the mean / most probable outcome, no mask).
    dims: sizes for symbolic dims, fixed model-wide (constant mode needs concrete shapes).
    noise_dtype: "same", "float32" or "float16": the dtype noise inputs are fed in (cast
        in-graph to what the draw needs).
    only / exclude: glob patterns over node names and output names selecting the nodes to
        rewrite; unselected random nodes stay as they are (the report says so).
    check: run the conditional parity check in onnxruntime; raises ParityError on failure.
    output: if given, the model is written there atomically (only after the check passed).
    """
    if mode not in MODES:
        raise UsageError(f"--mode {mode!r}: choose one of {', '.join(MODES)}")
    if check_size < 1:
        raise UsageError(f"--check-size {check_size}: must be a positive integer")
    for flag, value in (("--atol", atol), ("--rtol", rtol)):
        if value is not None and not value >= 0:
            raise UsageError(f"{flag} {value}: a tolerance must be a non-negative number")
    if output is not None:
        check_writable(output)
    original, source = _load(model_or_path)
    select = make_selector(only, exclude)
    new_model, records = rewrite_model(original, mode, seed=seed, dims=dims,
                                       max_draw_bytes=max_draw_bytes, select=select,
                                       noise_dtype=noise_dtype)
    report = RewriteReport(
        mode=mode, input=source, output=str(output) if output is not None else None,
        nodes=records, ops_before=op_counts(original), ops_after=op_counts(new_model),
        new_inputs=[r.replacement.name for r in records
                    if r.replacement and r.replacement.kind == "input"],
        ops_kept=sum(1 for r in records if r.status == "kept"),
    )
    if not records:
        report.parity = Parity(status="skipped", reason="the model has no random nodes")
    elif not any(r.status == "rewritten" for r in records):
        report.parity = Parity(status="skipped", reason="no random node was selected")
    elif check:
        report.parity = check_parity(original, new_model, records, mode, size=check_size,
                                     atol=atol, rtol=rtol, seed=seed, dims=dims,
                                     select=select, on_line=on_line)
        if report.parity.status == "failed":
            raise ParityError(f"parity check failed: {report.parity.reason}", report)
    else:
        report.parity = Parity(status="skipped", reason="--no-check")
    if output is not None:
        save_model_atomic(new_model, Path(output))
    return new_model, report


def inspect(model_or_path: ModelLike) -> InspectReport:
    """Every random node of a model: where it lives, op, attributes, shape, dtype, readers."""
    model, source = _load(model_or_path)
    return inspect_model(model, source)


def noise_feeds(model_or_path: ModelLike, dims: dict[str, int] | None = None,
                seed: int | None = None, rng=None) -> dict:
    """The standard-noise arrays a rewritten model needs for one run, read from the graph.

    dims gives sizes for the symbolic dims of the noise inputs (e.g. {"batch": 4}).
    """
    model, _ = _load(model_or_path)
    return make_noise_feeds(model, dims=dims, seed=seed, rng=rng)
