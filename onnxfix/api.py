"""The Python API behind the CLI: rewrite a model, check it, report what was done.

`rewrite` takes loose keyword parameters (the documented API) and builds the typed options;
`run` takes them typed (what the CLI calls): plan the rewrite once, emit the mode, check it
against the same plan's input-noise twin, write the output only after the check passed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import onnx

from onnxfix.errors import OnnxfixError, ParityError, UsageError, param
from onnxfix.graph.find import shared_walks, stop_sharing
from onnxfix.io import (
    LAYOUTS,
    NO_CHECKER,
    Skeleton,
    check_writable,
    checkable,
    materialize,
    open_model,
    save_model_atomic,
    save_with_weights,
    validate_model,
)
from onnxfix.options import MAX_CHECK_SIZE, CheckSettings, RewriteOptions
from onnxfix.passes.emit import DEFAULT_MAX_DRAW_BYTES
from onnxfix.passes.output_shapes import redeclare_output_shapes, reusable_output_facts
from onnxfix.passes.plan import ModelPlan
from onnxfix.report import Parity, RewriteReport, op_counts, op_counts_in_place
from onnxfix.reporter import Reporter, Sink
from onnxfix.rewrite import apply_emitted, apply_plan, plan_model

if TYPE_CHECKING:
    from onnxfix.inspection import InspectReport

ModelLike = onnx.ModelProto | str | os.PathLike
__all__ = ["MAX_CHECK_SIZE", "inspect", "noise_feeds", "rewrite", "run"]


def _open(model_or_path: ModelLike, checker: bool = True
          ) -> tuple[onnx.ModelProto, str | None, Skeleton | None]:
    """A model to work on: for a file, its skeleton (weights stay in the file, unread).
    checker=False: validated without onnx's checker (see `inspect`)."""
    if isinstance(model_or_path, onnx.ModelProto):
        # the passes work on a model they own: the plan clears the outputs' declared shapes
        # for its inference and puts them back, which a caller's model (perhaps read by
        # another thread meanwhile) must never see. The copy is the one validated (the same
        # content), so its walk is the one the passes share (graph.find.shared_walks).
        owned = onnx.ModelProto()
        owned.CopyFrom(model_or_path)
        validate_model(owned, "model", passed=frozenset() if checker else NO_CHECKER)
        return owned, None, None
    if isinstance(model_or_path, (str, os.PathLike)):
        skeleton = open_model(model_or_path, checker=checker)
        return skeleton.model, str(model_or_path), skeleton
    raise UsageError(f"expected an onnx.ModelProto or a path, got {type(model_or_path).__name__}")


def _load(model_or_path: ModelLike, checker: bool = True) -> tuple[onnx.ModelProto, str | None]:
    model, source, skeleton = _open(model_or_path, checker)
    if skeleton is not None:
        skeleton.close()
    return model, source


def rewrite(model_or_path: ModelLike, mode: str = "input-noise", *, seed: int = 0,
            dims: dict[str, int] | None = None, only: list[str] | None = None,
            exclude: list[str] | None = None, noise_dtype: str = "same",
            noise_bounds: dict[str, int] | None = None, multinomial: str = "inverse-cdf",
            check: bool = True,
            atol: float | None = None, rtol: float | None = None, check_size: int = 2,
            check_inputs: str | os.PathLike | dict | None = None,
            check_memory_mb: float | None = None, check_timeout: float | None = None,
            fail_on_skip: bool = False,
            max_draw_bytes: int = DEFAULT_MAX_DRAW_BYTES,
            output: str | os.PathLike | None = None, weights: str = "same",
            load_weights: bool = True, on_line: Sink | None = None,
            reporter: Reporter | None = None) -> tuple[onnx.ModelProto, RewriteReport]:
    """Rewrite every random node of a model; return the new model and the report.

    mode, seed, dims, noise_dtype, noise_bounds, multinomial, max_draw_bytes, only, exclude: see
    onnxfix.options.RewriteOptions. check (run it), atol, rtol, check_size, check_inputs,
    check_memory_mb, check_timeout, fail_on_skip: see onnxfix.options.CheckSettings.
    output, weights, load_weights: see `run`. reporter (or on_line, a callable taking one
    line): where the check's PASSED / FAILED lines go.
    """
    options = RewriteOptions(mode=mode, seed=seed, dims=dims or {}, noise_dtype=noise_dtype,
                             noise_bounds=noise_bounds or {}, max_draw_bytes=max_draw_bytes,
                             multinomial=multinomial,
                             only=tuple(only or ()), exclude=tuple(exclude or ()))
    settings = CheckSettings(enabled=check, atol=atol, rtol=rtol, size=check_size,
                             inputs=check_inputs, memory_mb=check_memory_mb,
                             timeout=check_timeout, fail_on_skip=fail_on_skip)
    return run(model_or_path, options, settings, output=output, weights=weights,
               load_weights=load_weights, reporter=Reporter.of(reporter or on_line))


def run(model_or_path: ModelLike, options: RewriteOptions,
        settings: CheckSettings | None = None, *,
        output: str | os.PathLike | None = None, weights: str = "same",
        load_weights: bool = True, reporter: Reporter | None = None,
        ) -> tuple[onnx.ModelProto, RewriteReport]:
    """`rewrite` with typed options (settings None: CheckSettings' defaults).

    output: if given, the model is written there atomically (only after the check passed).
    weights: how the written file stores the weights: "same" layout as the input (embedded
        stays embedded, external data goes to one `<output>.data` beside it), "embedded", or
        "external" (`<output>.data`). Above 2 GB, weights always go to `<output>.data`.
    load_weights: for a path, return the model with its weights in memory; False returns it
        with the weights as external references into the input file (cheap; what the CLI
        uses), valid only while that file is unchanged.
    """
    if weights not in LAYOUTS:
        raise UsageError(f"{param('weights', weights)}: choose one of {', '.join(LAYOUTS)}")
    if output is not None:
        check_writable(output)
    with shared_walks():  # the input is walked once, as it is validated (graph.find)
        return _run(model_or_path, options, settings, output, weights, load_weights, reporter)


def _run(model_or_path, options, settings, output, weights, load_weights, reporter):
    original, source, skeleton = _open(model_or_path)
    try:
        new_model, report = _rewrite(original, source, skeleton, options,
                                     settings or CheckSettings(), output, Reporter.of(reporter))
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


def _rewrite(original, source, skeleton, options: RewriteOptions, settings: CheckSettings,
             output, reporter: Reporter) -> tuple[onnx.ModelProto, RewriteReport]:
    model_plan = plan_model(original, options)
    new_model, emitted = apply_emitted(original, model_plan, options.mode, seed=options.seed,
                                       noise_dtype=options.noise_dtype,
                                       max_draw_bytes=options.max_draw_bytes,
                                       input_checked=True)  # _open checked it
    records = emitted.records
    rewritten = any(r.status == "rewritten" for r in records)
    ops_before = op_counts(original)
    ops_after = (op_counts_in_place(ops_before, emitted) if emitted.in_place
                 else op_counts(new_model))
    stop_sharing()  # the input's last shared walk is read (graph.find.shared_walks)
    report = RewriteReport(
        mode=options.mode, input=source, output=str(output) if output is not None else None,
        nodes=records, ops_before=ops_before, ops_after=ops_after,
        new_inputs=list(dict.fromkeys(r.replacement.name for r in records if r.replacement
                                      and r.replacement.kind in ("input", "seeded"))),
        seed_input=next((r.replacement.name for r in records
                         if r.replacement and r.replacement.kind == "seeded"), None),
        ops_kept=sum(1 for r in records if r.status == "kept"),
        redeclared_outputs=_redeclared(new_model, model_plan, emitted) if rewritten else [],
    )
    # the emit's per-site copies of the new nodes (each its own protobuf arena: ~17 MB at 2000
    # draws) are spliced into new_model by now; held on, the check's process inherits them
    del emitted
    if not records:
        report.parity = Parity(status="skipped", reason="the model has no random nodes")
    elif not rewritten:
        removed = sum(r.status == "removed" for r in records)
        why = (f"no random node was rewritten ({removed} removed as dead)" if removed
               else "no random node was selected")
        report.parity = Parity(status="skipped", reason=why)
    elif settings.enabled:
        report.parity = _check(original, new_model, records, model_plan, options, settings,
                               source, skeleton, reporter)
        _raise_unless_passed(report, settings)
    else:
        report.parity = Parity(status="skipped", reason="--no-check")
    return new_model, report


def _redeclared(new_model, model_plan: ModelPlan, emitted):
    """Output re-declaration, from the plan's inference where it provably still holds."""
    known = reusable_output_facts(model_plan.output_facts, model_plan.draw_facts, new_model,
                                  emitted)
    return redeclare_output_shapes(new_model, known)


def _check(original, new_model, records, model_plan: ModelPlan, options: RewriteOptions,
           settings: CheckSettings, source, skeleton, reporter: Reporter) -> Parity:
    """The parity check of the emitted model against the same plan's input-noise twin."""
    # the check package pulls in onnxruntime: imported only when a check runs, so
    # `--help`, `inspect` and `--no-check` start as fast as onnx itself
    from onnxfix.check.check_guard import make_limits, model_bytes  # noqa: PLC0415
    from onnxfix.check.check_inputs import load_check_inputs  # noqa: PLC0415
    from onnxfix.check.check_run import CheckOptions, run_check  # noqa: PLC0415

    limits = make_limits(settings.memory_mb, settings.timeout, model_bytes(original, source))
    given = (load_check_inputs(settings.inputs, original, options.dims)
             if settings.inputs is not None else None)
    check_options = CheckOptions(size=settings.size, atol=settings.atol, rtol=settings.rtol,
                                 seed=options.seed, given=given, limits=limits,
                                 fail_on_skip=settings.fail_on_skip)

    return run_check(original, new_model, records, options.mode, check_options,
                     twin=PlanTwin(original, model_plan),
                     reporter=reporter,
                     weights_folder=str(skeleton.folder) if skeleton is not None else None)


@dataclass(frozen=True)
class PlanTwin:
    """measured bounds -> the input-noise twin of `original` from the same plan (a value, not
    a closure: it travels with the check into a fresh interpreter when a fork stalls)."""

    original: onnx.ModelProto
    plan: ModelPlan

    def __call__(self, measured: dict[str, int]):
        return apply_plan(self.original, self.plan.with_bounds(measured), "input-noise")


def _raise_unless_passed(report: RewriteReport, settings: CheckSettings) -> None:
    if report.parity.status == "failed":
        raise ParityError(f"parity check failed: {report.parity.reason}", report)
    if report.parity.status == "skipped" and settings.fail_on_skip:
        raise ParityError(f"parity check skipped and fail_on_skip is set: "
                          f"{report.parity.reason}", report)


def inspect(model_or_path: ModelLike) -> InspectReport:
    """Every random node of a model: where it lives, op, attributes, shape, dtype, readers."""
    from onnxfix.inspection import inspect_model  # noqa: PLC0415 - not needed by a rewrite

    # Listing nodes proves nothing, so onnx's checker (slower than onnx.load on a large graph)
    # does not run first; a model inspect cannot make sense of is checked then, and one the
    # checker refuses is refused in its words, as a rewrite would be.
    with shared_walks():  # the model is walked once, as it is validated (graph.find)
        model, source = _load(model_or_path, checker=False)
        try:
            return inspect_model(model, source)
        except OnnxfixError:
            raise
        except Exception:
            validate_model(checkable(model), source or "model")
            raise


def noise_feeds(model_or_path: ModelLike, dims: dict[str, int] | None = None,
                seed: int | None = None, rng=None, generator: str = "numpy") -> dict:
    """The standard-noise arrays a rewritten model needs for one run, read from the graph.

    dims gives sizes for the symbolic dims of the noise inputs (e.g. {"batch": 4}).
    generator: "numpy" (numpy's PCG64 from `seed`, or `rng`) or "seeded": the noise the
    seeded rewrite of the same original draws in-graph with `seed`, so an input-noise model
    fed it computes what the seeded model computes. A seeded model itself has no noise
    inputs: its feed is {seed input: seed} (with either generator).
    """
    from onnxfix.feeds import make_noise_feeds  # noqa: PLC0415 - not needed by a rewrite

    model, _ = _load(model_or_path)
    return make_noise_feeds(model, dims=dims, seed=seed, rng=rng, generator=generator)
