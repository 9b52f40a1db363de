"""Captured draws -> the standard noise that makes the rewritten model draw them again.

Each op's class inverts its own transform (`standardize`); this module handles what is the
same for every op: branches that did not run, loops (stacked draws, declared bounds), the
dtype the noise is fed in, and re-standardizing against the rewritten model's own tensors
where an op asks for it (`own_reference`).
"""

from __future__ import annotations

import math

import numpy as np
import onnx

from onnxfix.check.capture_model import Captured
from onnxfix.check.capture_threaded import RAN
from onnxfix.check.compare import (
    CHECK_INPUT_BYTES,
    CheckSkipped,
    filler,
    input_dtype,
    input_meta,
    run_all,
)
from onnxfix.ops import Improbable, Inconsistent, np_dtype
from onnxfix.report import NodeRecord

FILL = 0.5  # what noise reads where no draw was made (never compared)


class UnlikelyDraw(CheckSkipped):
    """The original drew a legitimate value that the noise cannot reproduce (ops.Improbable):
    the check may run the original again for another draw."""


def standard_noises(captures: list[Captured], got: dict, sess, own: dict[int, str]
                    ) -> dict[int, np.ndarray] | None:
    """Capture index -> its standardized draw, for every capture that ran and is not
    re-standardized later (`own`): one `standardize_all` call per op for all its draws.
    None when some draw raises (an op that cannot condition on it, say): `standard_noise`,
    capture by capture, then meets it where it always did, after the checks of the
    captures before it."""
    jobs: dict[int, tuple] = {}  # id(spec) -> (spec, capture indices, jobs)
    made = {}
    try:
        for k, c in enumerate(captures):
            outs, ins = _captured(c, got)
            if k in own or _no_draw(c, got, outs, ins):
                continue
            spec = c.spec
            _, ks, todo = jobs.setdefault(id(spec), (spec, [], []))
            ks.append(k)
            todo.append((outs, c.attrs, ins, _noise_dtype(c, sess), c.lead))
        for spec, ks, todo in jobs.values():
            made.update(zip(ks, spec.standardize_all(todo), strict=True))
    except Exception:  # noqa: BLE001 - the capture-by-capture path raises it in its place
        return None
    return made


def _captured(c: Captured, got: dict) -> tuple[dict, dict]:
    """The captured outputs and inputs of `c`, by their index on its node."""
    return ({i: got[name] for i, name in c.outputs.items()},
            {i: got[name] for i, name in c.inputs.items()})


def _no_draw(c: Captured, got: dict, outs: dict, ins: dict) -> bool:
    """Its If branch did not run, or its loop ran no iteration: the noise is filler."""
    if any(bool(np.asarray(got[cond]).reshape(-1)[0]) != want for cond, want in c.branches) \
            or any(v is None for v in (*outs.values(), *ins.values())):
        return True
    return bool(outs) and all(np.asarray(v).size == 0 for v in outs.values())


def standard_noise(c: Captured, got: dict, sess, n: int, provisional: bool = False,
                   made: np.ndarray | None = None) -> np.ndarray:
    """The noise input of capture `c`, from the original's outputs `got`; `provisional`: only
    a feed for the run that `recondition` reads its op's own reference from. `made`: the
    draw already standardized (by `standard_noises`)."""
    name = c.record.replacement.name
    if made is not None:  # standard_noises made it: its draw ran
        return _fitted(made, c, got, sess, name)
    outs, ins = _captured(c, got)
    if _no_draw(c, got, outs, ins):
        return filler(sess, name, n)
    try:
        if provisional:
            noise = c.spec.provisional(outs, _noise_dtype(c, sess))
        else:
            noise = c.spec.standardize_stacked(outs, c.attrs, ins, _noise_dtype(c, sess),
                                               c.lead)
    except Inconsistent as e:
        raise _cannot_condition(c.record, e) from None
    return _fitted(noise, c, got, sess, name)


def _fitted(noise: np.ndarray, c: Captured, got: dict, sess, name: str) -> np.ndarray:
    """The noise as fed: filler where an If in a Loop did not run, padded to declared axes."""
    ran = got.get(RAN + c.outputs[0])
    if ran is not None:  # under an If in a Loop: iterations without the draw read filler
        ran = ran.reshape(ran.shape + (1,) * (noise.ndim - ran.ndim))
        noise = np.where(ran, noise, np.asarray(FILL, noise.dtype))
    return _fit(noise, sess, name)


def _noise_dtype(c: Captured, sess) -> np.dtype:
    """The dtype to build the noise in: the fed one, or the narrower of it and the in-graph
    one (discrete draws must survive the cast)."""
    repl = c.record.replacement
    fed = input_dtype(sess, repl.name)
    if not repl.cast_to:
        return fed
    natural = np_dtype(onnx.TensorProto.DataType.Value(repl.cast_to.upper()))
    return fed if fed.itemsize < natural.itemsize else natural


def _cannot_condition(rec: NodeRecord, e: Inconsistent) -> CheckSkipped:
    kind = UnlikelyDraw if isinstance(e, Improbable) else CheckSkipped
    return kind(f"cannot condition on the draw of {rec.op_type} '{rec.output}': {e}")


def _fit(noise: np.ndarray, sess, name: str) -> np.ndarray:
    """Pad to a declared iteration axis longer than the loop ran (the rest is never read)."""
    declared = input_meta(sess, name).shape or []
    if len(declared) != noise.ndim:
        return noise
    if noise.nbytes <= CHECK_INPUT_BYTES and not any(
            isinstance(d, int) and d > have
            for d, have in zip(declared, noise.shape, strict=True)):
        return noise  # no declared axis is longer than the draw: nothing to pad
    pad = [(0, d - have) if isinstance(d, int) and d > have else (0, 0)
           for d, have in zip(declared, noise.shape, strict=True)]
    padded = math.prod(have + after for have, (_, after) in zip(noise.shape, pad, strict=True))
    if padded * noise.dtype.itemsize > CHECK_INPUT_BYTES:
        raise CheckSkipped(f"noise input '{name}' declares {declared}: padding the captured "
                           f"draws to it would take over {CHECK_INPUT_BYTES:,} bytes")
    if any(after for _, after in pad):
        noise = np.pad(noise, pad, constant_values=FILL)
    return noise


def over_bound(record: NodeRecord, noise: np.ndarray) -> str:
    """'N on <bound name>, over its bound B' when a captured draw outgrows a bounded dim."""
    for d in record.replacement.dims:
        if (d["kind"] == "bounded" and d["axis"] < noise.ndim
                and noise.shape[d["axis"]] > d["size"]):
            return f"{noise.shape[d['axis']]} on {d['name']}, over its bound {d['size']}"
    return ""


def own_references(captures: list[Captured], noise_model: onnx.ModelProto) -> dict[int, str]:
    """Capture index -> the tensor of the rewritten model each main-graph capture is
    re-standardized against (its op's `own_reference`)."""
    found = {}
    for k, c in enumerate(captures):
        if not c.lead and not c.branches and c.record.graph == "main":
            name = c.spec.own_reference(noise_model.graph.node, c.record.replacement.name)
            if name:
                found[k] = name
    return found


def recondition(captures: list[Captured], own: dict[int, str], got: dict, feeds: dict,
                noise: dict, sess) -> None:
    """Re-standardize the draws in `own` against the rewritten model's own tensors.

    E.g. an inverse CDF over many classes turns an ulp of difference anywhere in its weights
    into a shift of its class boundaries (50k classes: ~1e-5, half a class), and
    onnxruntime rounds them an ulp apart from one graph (or memory plan) to another. The
    sample is what is conditioned on; the boundaries it is reproduced between are the
    rewritten model's own, read from the same session that is then compared.
    """
    if not own:
        return
    try:
        seen = run_all(sess, feeds)
    except Exception:  # noqa: BLE001 - the comparison run reports it
        return
    for k, name in own.items():
        c = captures[k]
        fed = input_dtype(sess, c.record.replacement.name)
        outs = {i: got[out] for i, out in c.outputs.items()}
        try:
            u = c.spec.recondition(outs, seen[name], fed)
        except Inconsistent as e:
            raise _cannot_condition(c.record, e) from None
        noise[c.record.replacement.name] = np.asarray(u, dtype=fed)
