"""The Python API behind the CLI: rewrite a model, check it, report what was done."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import onnx

from onnxfix.check.check_guard import make_limits, model_bytes
from onnxfix.check.check_inputs import load_check_inputs
from onnxfix.check.check_run import CheckOptions, run_check
from onnxfix.errors import ParityError, UsageError
from onnxfix.feeds import make_noise_feeds
from onnxfix.graph.find import make_selector
from onnxfix.inspection import InspectReport, inspect_model
from onnxfix.io import (
    LAYOUTS,
    Skeleton,
    check_writable,
    materialize,
    open_model,
    save_model_atomic,
    save_with_weights,
    validate_model,
)
from onnxfix.passes.output_shapes import redeclare_output_shapes
from onnxfix.report import Parity, RewriteReport, op_counts
from onnxfix.rewrite import DEFAULT_MAX_DRAW_BYTES, MODES, rewrite_model

ModelLike = onnx.ModelProto | str | os.PathLike
# Sizes the check gives symbolic dims: beyond this, synthetic inputs stop being a test.
MAX_CHECK_SIZE = 2**16


def _open(model_or_path: ModelLike) -> tuple[onnx.ModelProto, str | None, Skeleton | None]:
    """A model to work on: for a file, its skeleton (weights stay in the file, unread)."""
    if isinstance(model_or_path, onnx.ModelProto):
        validate_model(model_or_path, "model")
        return model_or_path, None, None
    if isinstance(model_or_path, (str, os.PathLike)):
        skeleton = open_model(model_or_path)
        return skeleton.model, str(model_or_path), skeleton
    raise UsageError(f"expected an onnx.ModelProto or a path, got {type(model_or_path).__name__}")


def _load(model_or_path: ModelLike) -> tuple[onnx.ModelProto, str | None]:
    model, source, skeleton = _open(model_or_path)
    if skeleton is not None:
        skeleton.close()
    return model, source


def rewrite(model_or_path: ModelLike, mode: str = "input-noise", *, seed: int = 0,
            dims: dict[str, int] | None = None, only: list[str] | None = None,
            exclude: list[str] | None = None, noise_dtype: str = "same",
            noise_bounds: dict[str, int] | None = None, check: bool = True,
            atol: float | None = None, rtol: float | None = None, check_size: int = 2,
            check_inputs: str | os.PathLike | dict | None = None,
            check_memory_mb: float | None = None, check_timeout: float | None = None,
            fail_on_skip: bool = False,
            max_draw_bytes: int = DEFAULT_MAX_DRAW_BYTES,
            output: str | os.PathLike | None = None, weights: str = "same",
            load_weights: bool = True,
            on_line: Callable[[str], None] | None = None,
            ) -> tuple[onnx.ModelProto, RewriteReport]:
    """Rewrite every random node of a model; return the new model and the report.

    mode: "input-noise" (standard noise as new graph inputs), "constant" (seeded draws) or
        "deterministic" (the mean / most probable outcome, no mask).
    dims: sizes for symbolic dims, fixed model-wide (constant mode needs concrete shapes).
    noise_dtype: "same", "float32" or "float16": the dtype noise inputs are fed in (cast
        in-graph to what the transform computes in: float32 or wider for Bernoulli,
        Multinomial and Dropout). float16 is refused (UsageError) for Bernoulli and
        Multinomial, whose samples it would bias.
    noise_bounds: upper bounds of data-dependent noise dims, by the name the error and the
        report give (`<noise input>:<axis>`), e.g. {"noise_z:2": 400}: that axis is declared
        with the bound and the graph slices what each run needs.
    only / exclude: glob patterns over node names and output names selecting the nodes to
        rewrite; unselected random nodes stay as they are (the report says so).
    check: run the conditional parity check in onnxruntime; raises ParityError on failure.
    check_size: the size symbolic dims take in the check (synthetic inputs); a dynamic model
        runs again at check_size + 1 when the first size was cheap.
    check_inputs: real inputs for the check instead of synthetic ones: a path to an .npz
        file or a dict input name -> array; the check then runs once, on them.
    check_memory_mb / check_timeout: the check's memory cap (default min(8 GiB, half the
        RAM)) and time limit (default 300 s); a check that exceeds them is skipped.
    fail_on_skip: a skipped check raises ParityError (and nothing is written) instead of
        writing the output unverified.
    output: if given, the model is written there atomically (only after the check passed).
    weights: how the written file stores the weights: "same" layout as the input (embedded
        stays embedded, external data goes to one `<output>.data` beside it), "embedded", or
        "external" (`<output>.data`). Above 2 GB, weights always go to `<output>.data`.
    load_weights: for a path, return the model with its weights in memory; False returns it
        with the weights as external references into the input file (cheap; what the CLI
        uses), valid only while that file is unchanged.
    """
    if mode not in MODES:
        raise UsageError(f"--mode {mode!r}: choose one of {', '.join(MODES)}")
    if not 1 <= check_size <= MAX_CHECK_SIZE:
        raise UsageError(f"--check-size {check_size}: must be an integer from 1 to "
                         f"{MAX_CHECK_SIZE}")
    for flag, value in (("--atol", atol), ("--rtol", rtol)):
        if value is not None and not value >= 0:
            raise UsageError(f"{flag} {value}: a tolerance must be a non-negative number")
    if weights not in LAYOUTS:
        raise UsageError(f"--weights {weights!r}: choose one of {', '.join(LAYOUTS)}")
    if fail_on_skip and not check:
        raise UsageError("--fail-on-skip with --no-check: a check that is not run would "
                         "always fail")
    make_limits(check_memory_mb, check_timeout)  # a bad value is refused before any work
    if output is not None:
        check_writable(output)
    original, source, skeleton = _open(model_or_path)
    try:
        limits = make_limits(check_memory_mb, check_timeout, model_bytes(original, source))
        given = (load_check_inputs(check_inputs, original, dims or {})
                 if check_inputs is not None else None)
        options = CheckOptions(size=check_size, atol=atol, rtol=rtol, seed=seed, given=given,
                               limits=limits, fail_on_skip=fail_on_skip)
        new_model, report = _rewrite(original, source, skeleton, mode, seed=seed, dims=dims,
                                     select=make_selector(only, exclude),
                                     noise_dtype=noise_dtype, noise_bounds=noise_bounds,
                                     check=check, check_options=options,
                                     max_draw_bytes=max_draw_bytes,
                                     output=output, on_line=on_line)
        if output is not None:
            if skeleton is not None:
                save_with_weights(new_model, skeleton, output, layout=weights)
            else:
                save_model_atomic(new_model, Path(output))
        if skeleton is not None and load_weights:
            new_model = materialize(new_model, skeleton)
        return new_model, report
    finally:
        if skeleton is not None:
            skeleton.close()


def _rewrite(original, source, skeleton, mode, *, seed, dims, select, noise_dtype, noise_bounds,
             check, check_options, max_draw_bytes, output, on_line):
    new_model, records = rewrite_model(original, mode, seed=seed, dims=dims,
                                       max_draw_bytes=max_draw_bytes, select=select,
                                       noise_dtype=noise_dtype, noise_bounds=noise_bounds)
    redeclared = (redeclare_output_shapes(new_model)
                  if any(r.status == "rewritten" for r in records) else [])
    report = RewriteReport(
        mode=mode, input=source, output=str(output) if output is not None else None,
        nodes=records, ops_before=op_counts(original), ops_after=op_counts(new_model),
        new_inputs=[r.replacement.name for r in records
                    if r.replacement and r.replacement.kind == "input"],
        ops_kept=sum(1 for r in records if r.status == "kept"), redeclared_outputs=redeclared,
    )
    if not records:
        report.parity = Parity(status="skipped", reason="the model has no random nodes")
    elif not any(r.status == "rewritten" for r in records):
        removed = sum(r.status == "removed" for r in records)
        why = (f"no random node was rewritten ({removed} removed as dead)" if removed
               else "no random node was selected")
        report.parity = Parity(status="skipped", reason=why)
    elif check:
        report.parity = run_check(
            original, new_model, records, mode, check_options, dims=dims, select=select,
            noise_bounds=noise_bounds, on_line=on_line,
            weights_folder=str(skeleton.folder) if skeleton is not None else None)
        if report.parity.status == "failed":
            raise ParityError(f"parity check failed: {report.parity.reason}", report)
        if report.parity.status == "skipped" and check_options.fail_on_skip:
            raise ParityError(f"parity check skipped and fail_on_skip is set: "
                              f"{report.parity.reason}", report)
    else:
        report.parity = Parity(status="skipped", reason="--no-check")
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
