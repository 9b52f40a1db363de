"""The seeded model's check: it must equal its input-noise twin fed the noise the generator's
numpy reference (onnxfix.seeded.algorithm) makes for the same seed.

Per check size and for two seeds (s and s + 1): the seeded model runs twice (the runs must be
identical), a probe of it reports the shape of every draw (per Loop iteration), the twin is
made with those sizes as the bounds of its data-dependent dims, and each noise input gets the
reference draws in the shapes the seeded model really drew (iteration i of a Loop: the
stream of iteration i, in the prefix its slice reads). Every output must match within the
usual tolerance: uniforms, and the discrete samples built from them, are bit-identical;
normals differ from numpy's Log / Cos / Sqrt by a few float32 ulps.

Below opset 7 onnxruntime runs neither model (it has no Mul-6): both are compared on copies
converted to opset 7 (`opset_bridge`, which refuses a conversion that changes an op's
meaning); each comparison line says so, and the verdict is a skip naming what was verified
(the generator, on those copies) and what was not (the models at their own opset).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx

from onnxfix.check.check_blame import no_kernel, twin_fails
from onnxfix.check.check_setup import check_dims, check_feeds, check_sizes, inputs_word
from onnxfix.check.compare import (
    CheckSkipped,
    compare_arrays,
    dims_text,
    identical,
    input_dtype,
    input_meta,
    run_all,
    symbolic_dims,
)
from onnxfix.check.opset_bridge import BRIDGE_OPSET, needs_bridge, to_bridge_opset
from onnxfix.check.twin import compared_outputs, open_twin
from onnxfix.check.twin_noise import TwinSizes, draw_shape_probe, measured_sizes
from onnxfix.check.verdicts import fail, record
from onnxfix.errors import ModelError, one_line
from onnxfix.graph.find import default_opset
from onnxfix.report import NodeRecord, OutputCheck, Parity
from onnxfix.seeded import algorithm as alg
from onnxfix.seeded.metadata import SEED_METADATA_KEY, seed_metadata


def seed_entry(model: onnx.ModelProto) -> dict:
    """The model's seed metadata (see onnxfix.seeded.metadata); a ModelError without it."""
    entry = seed_metadata(model)
    if entry is None:
        raise ModelError(f"the model has no valid {SEED_METADATA_KEY} metadata (not a seeded "
                         f"rewrite)")
    return entry


def seeded_checks(parity: Parity, opener, original: onnx.ModelProto, model: onnx.ModelProto,
                  records: list[NodeRecord], make_twin, size: int, seed: int, emit, *,
                  conditional) -> None:
    """The whole seeded check: the input-noise twin against the original (`conditional`,
    the input-noise check) where the twin needs no measured bound, then `check_seeded`."""
    twin_skipped = ""
    try:
        twin = make_twin({})
    except ModelError:  # a data-dependent noise dim: the twin needs the sizes of a run
        twin = None
        emit("NOTE | a noise dim is data-dependent: the input-noise twin is not checked "
             "against the original here (input-noise mode with --noise-bound does that); "
             "the seeded model is checked against the twin at the sizes it draws")
    if twin is not None:
        try:
            conditional(parity, opener, original, *twin, size, seed, emit)
        except CheckSkipped as e:  # the twin's own check; the seeded model's still runs
            twin_skipped = str(e)
            parity.note = f"the input-noise twin was not checked against the original: {e}"
            emit(f"NOTE | {parity.note}")
    if parity.status != "failed":
        check_seeded(parity, opener, model, records, make_twin, size, seed, emit)
    if parity.status == "passed" and needs_bridge(model):
        raise CheckSkipped(_bridged_reason(parity, default_opset(model), twin_skipped))


def _bridged_reason(parity: Parity, opset: int, twin_skipped: str) -> str:
    """What a check on opset-7 copies verified, and what it did not."""
    count = sum(1 for c in parity.outputs if c.note.endswith(_BRIDGED))
    if twin_skipped:
        unchecked = (f"the models at their own opset {opset}, which onnxruntime cannot run, and "
                     f"the input-noise twin against the original ({twin_skipped})")
    else:  # the twin ran at its own opset and passed against the original
        unchecked = f"the seeded model at its own opset {opset}, which onnxruntime cannot run"
    return (f"verified only on copies converted to opset {BRIDGE_OPSET}: the seeded model "
            f"equals its input-noise twin fed the generator's reference noise ({count} "
            f"comparisons passed); not verified: {unchecked}")


_BRIDGED = f"on copies converted to opset {BRIDGE_OPSET}"


def check_seeded(parity: Parity, opener, model: onnx.ModelProto, records: list[NodeRecord],
                 make_twin, size: int, seed: int, emit) -> None:
    """The seeded model against its twin (see the module doc); results go into `parity`."""
    entry = seed_entry(model)
    keys = {d["draw"]: d for d in entry["draws"]}
    opset = default_opset(model)  # the generator's form (`algorithm.normal`)
    out_names = compared_outputs(model, "seeded", emit)
    note = ""
    if needs_bridge(model):
        model = to_bridge_opset(model, "the seeded model")
        make_twin, note = _bridged_twin(make_twin), _BRIDGED
    try:
        # one session: the model's outputs and the shape of every draw (per Loop iteration)
        # the shape of each generator's noise (the Gumbel form's is not its draw's)
        noise = {d["draw"]: d["noise"] for d in entry["draws"] if d.get("noise")}
        probe, exposed, exposer = draw_shape_probe(model, records, every=True,
                                                   skip_uncapturable=True, measure=noise)
        sess = opener(probe)
    except CheckSkipped:
        raise
    except Exception as e:  # noqa: BLE001
        if no_kernel(e):
            raise no_kernel(e) from None
        fail(parity, f"the seeded model does not load in onnxruntime: {one_line(e)}", emit)
        return
    data_inputs = [i for i in sess.get_inputs() if i.name != entry["name"]]
    twins: dict[tuple, tuple] = {}
    for k, n in enumerate(check_sizes(size, symbolic_dims(data_inputs))):
        dims = check_dims(data_inputs, n)
        if dims not in parity.sizes:
            parity.sizes.append(dims)
        feeds = check_feeds(data_inputs, n, np.random.default_rng([seed, 200 + k]))
        outputs = []
        for s in (seed, seed + 1):
            run = {**feeds, entry["name"]: np.array(s, dtype=np.int64)}
            got = _run_twice(parity, sess, run, out_names, dims, emit)
            outputs.append(got)
            shapes = _decoded(exposer, got)
            sizes = measured_sizes(records, exposed, shapes)
            twin_sess, twin_records = _twin(opener, make_twin, sizes.bounds, twins)
            noise = _reference_noise(records, twin_records, twin_sess, keys,
                                     {r: shapes[e] for r, e in exposed.items()}, s,
                                     _Fallback(sizes, n), opset)
            try:
                want = run_all(twin_sess, {**feeds, **noise})
            except Exception as e:  # noqa: BLE001
                raise twin_fails(e, "rejects the seeded model's noise") from None
            for name in out_names:
                check = compare_arrays(f"{name} (seed {s})", got[name], want[name],
                                       parity.atol, parity.rtol, dims)
                check.note = "; ".join(t for t in (check.note, note) if t)
                _record(parity, check, emit)
        if all(identical(outputs[0][o], outputs[1][o]) for o in out_names):
            emit(f"NOTE | {dims_text(dims)} | seeds {seed} and {seed + 1} give the same "
                 f"outputs (no output depends on a draw at these inputs)")


def _bridged_twin(make_twin):
    """The twin maker, its models converted to opset 7 like the seeded model."""
    def make(bounds: dict[str, int]):
        twin, twin_records = make_twin(bounds)
        return to_bridge_opset(twin, "the input-noise twin"), twin_records
    return make


def _run_twice(parity, sess, run: dict, out_names, dims, emit) -> dict:
    try:
        first, second = run_all(sess, run), run_all(sess, run)
    except Exception as e:  # noqa: BLE001 - the model's own limits (a fixed Reshape...)
        raise CheckSkipped(f"the seeded model fails on {inputs_word()} ({dims_text(dims)}): "
                           f"{one_line(e)}") from None
    for name in out_names:
        if not identical(first[name], second[name]):
            _record(parity, OutputCheck(name, dims, list(first[name].shape), math.inf,
                                        math.inf, False, "two runs with the same seed differ"),
                    emit)
    return first


def _decoded(exposer, got: dict) -> dict:
    """The draw shapes of a run of the probe, stacked per Loop iteration (None: never drawn)."""
    shapes = dict(got)
    try:
        exposer.decode(shapes)
    except CheckSkipped:
        raise
    except Exception as e:  # noqa: BLE001
        raise CheckSkipped(f"the seeded model's draw shapes cannot be read: {one_line(e)}") \
            from None
    return shapes


@dataclass
class _Fallback:
    """Sizes for the axes of a noise input whose draw did not happen in this run."""

    sizes: TwinSizes
    n: int

    def size(self, d) -> int:
        if isinstance(d, int) and d >= 0:
            return d
        return self.sizes.dims.get(d, self.n) if isinstance(d, str) else self.n


def _twin(opener, make_twin, bounds: dict[str, int], cache: dict) -> tuple:
    """The input-noise twin with these bounds, opened once per set of bounds."""
    key = tuple(sorted(bounds.items()))
    if key not in cache:
        try:
            model, twin_records = make_twin(bounds)
        except ModelError as e:
            raise CheckSkipped(f"the seeded check cannot size its input-noise twin: {e}") \
                from None
        cache[key] = open_twin(opener, (model, twin_records)), twin_records
    return cache[key]


def _reference_noise(records, twin_records, twin_sess, keys: dict, drawn: dict, seed: int,
                     fallback: _Fallback, opset: int) -> dict[str, np.ndarray]:
    """Each twin noise input, holding the numpy reference's draws for `seed`."""
    noise_name = {r.output: r.replacement.name for r in twin_records if r.replacement}
    noise = {}
    for rec in records:
        target = noise_name[rec.output]
        declared = list(input_meta(twin_sess, target).shape or [])
        dtype = input_dtype(twin_sess, target)
        entry = keys[rec.output]
        if rec.output not in drawn:  # not capturable: the declared shape, every iteration
            loops = int(entry.get("loops", 1 if entry.get("iteration") else 0))
            shapes = _declared_shapes(declared, loops, fallback)
        else:
            shapes = drawn[rec.output]
            shapes = None if shapes is None else np.asarray(shapes, dtype=np.int64)
        if shapes is None or shapes.size == 0 and declared:  # never drawn in this run
            noise[target] = np.zeros([fallback.size(d) for d in declared], dtype=dtype)
            continue
        noise[target] = reference_draws(entry["family"], seed, int(entry["key"]), shapes,
                                        declared, dtype, opset)
    return noise


def _declared_shapes(declared: list, loops: int, fallback: _Fallback) -> np.ndarray:
    """The draw shapes a twin noise input declares (sized like `sized_fill`), one per pass of
    its `loops` enclosing loops (a draw whose shape no probe could read: an If inside a
    Scan)."""
    full = [fallback.size(d) for d in declared]
    shape = np.array(full[loops:], dtype=np.int64)
    return np.broadcast_to(shape, (*full[:loops], len(shape))).copy()


def reference_draws(family: str, seed: int, key: int, drawn: np.ndarray, declared,
                    dtype: np.dtype, opset: int | None = None) -> np.ndarray:
    """A noise input of shape `declared` (ints, or names sized by what was drawn) holding
    each draw's reference noise in its prefix. `drawn` is the draw's shape (1-D), or one
    shape per pass of the enclosing loops (a leading axis per loop: pass (i, j) draws the
    stream of outer iteration i, inner j). opset: the seeded model's (`algorithm.normal`)."""
    loops = drawn.ndim - 1
    lead = drawn.shape[:loops]
    most = drawn.max(axis=tuple(range(loops))) if all(lead) else \
        np.zeros(drawn.shape[-1], dtype=np.int64)
    wanted = list(lead) + list(most)
    declared = list(declared or [])
    if len(declared) != len(wanted):
        raise CheckSkipped(f"internal: a twin noise input has rank {len(declared)}, the seeded "
                           f"draw {len(wanted)}")
    shape = [d if isinstance(d, int) and d >= 0 else w for d, w in zip(declared, wanted,
                                                                         strict=True)]
    drawn_type = np.float64 if dtype == np.float64 else np.float32
    draw = alg.family_draw(family, opset)
    out = np.zeros(shape, dtype=dtype)
    for index in np.ndindex(*lead):
        one = drawn[index]
        if 0 in one:
            continue  # nothing drawn (an If branch not taken, an empty draw)
        value = draw(seed, key, one, drawn_type, iteration=index if loops else None)
        out[(*index, *(slice(0, int(d)) for d in one))] = value.astype(dtype)
    return out


def _record(parity: Parity, check: OutputCheck, emit) -> None:
    record(parity, check, emit)
    if not check.passed:
        parity.status = "failed"
