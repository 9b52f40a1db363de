"""The rewrite, read as its list of passes (each in onnxfix/passes/, testable alone):

    prepare -> plan -> emit(mode) -> splice -> tidy -> validate

`plan_model` runs the first two once; `apply_plan` runs the rest for one mode and can be
called again on the same plan (the parity check's input-noise twin). `rewrite_model` is both.
"""

from __future__ import annotations

from collections.abc import Callable

import onnx

from onnxfix.graph.find import Site
from onnxfix.options import RewriteOptions
from onnxfix.passes.emit import DEFAULT_MAX_DRAW_BYTES, MODES, NOISE_DTYPES, Emitted, emit
from onnxfix.passes.local_check import local_proof
from onnxfix.passes.plan import ModelPlan, SitePlan, plan
from onnxfix.passes.prepare import prepare
from onnxfix.passes.splice import splice
from onnxfix.passes.tidy import NOISE_METADATA_KEY, tidy
from onnxfix.passes.validate import validate
from onnxfix.report import NodeRecord

Plan = SitePlan  # the name callers knew


def plan_model(model: onnx.ModelProto, options: RewriteOptions,
               select: Callable[[Site], bool] | None = None) -> ModelPlan:
    """prepare -> plan: what every random node is, computed once (`model` is not changed)."""
    chooser = select if select is not None else options.select
    return plan(prepare(model, options.dims), chooser, options.noise_bounds,
                forms={"Multinomial": options.multinomial})


def apply_plan(original: onnx.ModelProto, model_plan: ModelPlan, mode: str, *, seed: int = 0,
               noise_dtype: str = "same", max_draw_bytes: int = DEFAULT_MAX_DRAW_BYTES,
               allow_unbounded: bool = False) -> tuple[onnx.ModelProto, list[NodeRecord]]:
    """emit(mode) -> splice -> tidy -> validate: a rewritten copy and one record per node."""
    out, emitted = apply_emitted(original, model_plan, mode, seed=seed,
                                 noise_dtype=noise_dtype, max_draw_bytes=max_draw_bytes,
                                 allow_unbounded=allow_unbounded)
    return out, emitted.records  # none for a model without random nodes (n_sites is 0)


def apply_emitted(original: onnx.ModelProto, model_plan: ModelPlan, mode: str, *,
                  seed: int = 0, noise_dtype: str = "same",
                  max_draw_bytes: int = DEFAULT_MAX_DRAW_BYTES,
                  allow_unbounded: bool = False,
                  input_checked: bool = False) -> tuple[onnx.ModelProto, Emitted]:
    """apply_plan, returning what the emit made (the replacements) instead of the records.

    input_checked: `original` is known to pass onnx's basic check (the API's readers check
    it): the output's basic check may then follow from it (passes.local_check)."""
    emitted = emit(model_plan, mode, seed=seed, noise_dtype=noise_dtype,
                   max_draw_bytes=max_draw_bytes, allow_unbounded=allow_unbounded)
    out = splice(emitted)
    if not model_plan.prepared.random:
        return out, emitted
    tidy(original, out, emitted.noise_meta, emitted.seed_meta)
    if emitted.sites:
        full_follows, patch = local_proof(model_plan, emitted, out, original, input_checked)
        emitted.in_place = patch is not None
        validate(original, out, full_follows=full_follows, patch=patch)
    return out, emitted


def rewrite_model(model: onnx.ModelProto, mode: str, *, seed: int = 0,
                  dims: dict[str, int] | None = None,
                  max_draw_bytes: int = DEFAULT_MAX_DRAW_BYTES,
                  select: Callable[[Site], bool] | None = None,
                  noise_dtype: str = "same",
                  noise_bounds: dict[str, int] | None = None,
                  allow_unbounded: bool = False,
                  ) -> tuple[onnx.ModelProto, list[NodeRecord]]:
    """Return a rewritten copy of `model` and one record per random node.

    The parameters are RewriteOptions' (see there); `select` picks the sites to rewrite.
    allow_unbounded: declare unbounded data-dependent dims symbolically instead of refusing
    (for `inspect`: such an output cannot be fed from the inputs alone).
    """
    options = RewriteOptions(mode=mode, seed=seed, dims=dims or {}, noise_dtype=noise_dtype,
                             noise_bounds=noise_bounds or {}, max_draw_bytes=max_draw_bytes)
    return rewrite_with(model, options, select, allow_unbounded=allow_unbounded)


def rewrite_with(model: onnx.ModelProto, options: RewriteOptions,
                 select: Callable[[Site], bool] | None = None, *,
                 allow_unbounded: bool = False) -> tuple[onnx.ModelProto, list[NodeRecord]]:
    """rewrite_model with typed options."""
    model_plan = plan_model(model, options, select)
    return apply_plan(model, model_plan, options.mode, seed=options.seed,
                      noise_dtype=options.noise_dtype, max_draw_bytes=options.max_draw_bytes,
                      allow_unbounded=allow_unbounded)


__all__ = ["DEFAULT_MAX_DRAW_BYTES", "MODES", "NOISE_DTYPES", "NOISE_METADATA_KEY", "Plan",
           "apply_emitted", "apply_plan", "plan_model", "rewrite_model", "rewrite_with"]
