"""`onnxfix.noise_feeds`: the standard noise a rewritten model needs for one run.

Everything is read from the model itself (the `onnxfix.noise_inputs` metadata, else each
noise input's doc_string), so deployment code never hard-codes names, shapes or dtypes. A
seeded model's feed is its seed input (the `onnxfix.seed_input` metadata names it).
"""

from __future__ import annotations

import json

import numpy as np
import onnx

from onnxfix.errors import ModelError, UsageError, param, param_name
from onnxfix.graph.find import default_opset
from onnxfix.graph.shapes import fix_dims, infer_facts, model_dim_names, ort_symbolic_facts
from onnxfix.ops import FAMILIES, np_dtype
from onnxfix.ops.noise import standard_noise
from onnxfix.passes.tidy import NOISE_METADATA_KEY
from onnxfix.seeded.algorithm import SEED_BITS
from onnxfix.seeded.algorithm import standard_noise as seeded_noise
from onnxfix.seeded.metadata import seed_metadata


def noise_inputs(model: onnx.ModelProto) -> list[dict]:
    """[{name, family, elem_type, shape}] for every noise input the graph declares."""
    declared = {i.name: i for i in model.graph.input}
    meta = {}
    for prop in model.metadata_props:
        if prop.key == NOISE_METADATA_KEY:
            try:
                meta = {e["name"]: e for e in json.loads(prop.value)}
            except (ValueError, KeyError, TypeError):
                raise ModelError(f"the {NOISE_METADATA_KEY} metadata is not valid JSON") from None
    found = []
    for name, vi in declared.items():
        family = meta.get(name, {}).get("family") or _family_from_doc(vi.doc_string)
        if family is None:
            continue
        t = vi.type.tensor_type
        shape = None
        if t.HasField("shape"):
            shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                     for d in t.shape.dim]
        entry = meta.get(name, {})
        found.append({"name": name, "family": family, "elem_type": t.elem_type, "shape": shape,
                      "dims": entry.get("dims") or [], "seeded_key": entry.get("seeded_key"),
                      "loops": entry.get("loops") or []})
    return found


def _family_from_doc(doc: str) -> str | None:
    for family in FAMILIES:
        if doc.startswith(f"onnxfix noise input ({family})"):
            return family
    return None


def make_noise_feeds(model: onnx.ModelProto, dims: dict[str, int] | None = None,
                     seed: int | None = None, rng: np.random.Generator | None = None,
                     generator: str = "numpy") -> dict[str, np.ndarray]:
    """generator: "numpy" (numpy's PCG64 from `seed` or `rng`) or "seeded" (what the seeded
    rewrite of the same original draws with `seed`, element for element)."""
    dims = dict(dims or {})
    if generator not in GENERATORS:
        raise UsageError(f"{param('generator', generator)}: choose one of "
                         f"{', '.join(GENERATORS)}")
    if generator == "seeded":
        _check_seeded_request(seed, rng)
    else:
        rng = rng if rng is not None else np.random.default_rng(seed)
    feeds = {}
    entries = noise_inputs(model)
    dims = {**_derived_sizes(model, entries, dims), **dims}
    for entry in entries:
        if entry["shape"] is None:
            raise UsageError(f"noise input '{entry['name']}' has no declared shape")
        missing = [d for d in entry["shape"] if not isinstance(d, int) and d not in dims]
        if missing:
            names = ", ".join(str(m) for m in missing if m) or "an unnamed dim"
            raise UsageError(f"noise input '{entry['name']}' needs a size for {names}: "
                             f"pass dims={{...}}")
        shape = [d if isinstance(d, int) else dims[d] for d in entry["shape"]]
        dtype = np_dtype(entry["elem_type"])
        if generator == "seeded":
            feeds[entry["name"]] = _seeded_noise(entry, int(seed), shape, dtype,
                                                 default_opset(model))
        else:
            feeds[entry["name"]] = standard_noise(rng, entry["family"], shape, dtype)
    seeded = seed_metadata(model)
    if seeded is not None and seeded["name"] in {i.name for i in model.graph.input}:
        value = seed if seed is not None else rng.integers(0, 1 << SEED_BITS)
        feeds[seeded["name"]] = np.array(int(value), dtype=np.int64)
    return feeds


GENERATORS = ("numpy", "seeded")


def _check_seeded_request(seed, rng) -> None:
    if rng is not None:
        raise UsageError(f"{param_name('rng')} with {param('generator', 'seeded')}: the seeded "
                         f"generator draws from {param_name('seed')} alone")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UsageError(f"{param('seed', seed)} with {param('generator', 'seeded')}: the seeded "
                         f"generator needs a non-negative integer seed")


def _seeded_noise(entry: dict, seed: int, shape: list[int], dtype: np.dtype,
                  opset: int) -> np.ndarray:
    """One noise input as the seeded rewrite draws it (float16 noise: drawn in float32) at
    the model's `opset` (the rewrite keeps it; before opset 7 normals take another cosine)."""
    name = entry["name"]
    if entry.get("seeded_key") is None:
        raise ModelError(f"noise input '{name}' has no seeded_key in the {NOISE_METADATA_KEY} "
                         f"metadata (rewritten by an older onnxfix): rewrite the model again")
    loops = len(entry.get("loops") or [])  # one leading iteration axis per enclosing loop
    # a bounded trip count is fine (pass i draws the stream of iteration i, whatever the
    # count); a bounded size inside one draw is not (the flat indices depend on it)
    bounded = [d for d in entry["dims"] if d.get("kind") == "bounded" and d["axis"] >= loops]
    if bounded:
        raise UsageError(f"noise input '{name}' has a data-dependent dim ({bounded[0]['name']}): "
                         f"the seeded generator draws the size each run computes, which no "
                         f"host-side noise can know in advance; run the seeded rewrite instead")
    drawn = np.float64 if dtype == np.float64 else np.float32
    iterations = shape[:loops] if loops else None
    local = shape[loops:]
    return seeded_noise(entry["family"], seed, int(entry["seeded_key"]), local, drawn,
                        iterations=iterations, opset=opset).astype(dtype)


def _derived_sizes(model: onnx.ModelProto, entries: list[dict],
                   dims: dict[str, int]) -> dict[str, int]:
    """Sizes of derived noise dims (tied to the input dims only through the graph's shapes),
    from shape inference with the caller's concrete input dims."""
    wanted = [d for e in entries for d in e["dims"]
              if d.get("kind") == "derived" and d.get("source") and d.get("name") not in dims]
    if not wanted:
        return {}
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    known = model_dim_names(fixed)
    fix_dims(fixed, {k: v for k, v in dims.items() if k in known})
    sizes: dict[str, int] = {}
    for infer in (infer_facts, ort_symbolic_facts):
        facts = infer(fixed)
        for d in wanted:
            f = facts.get(d["source"])
            axis = d.get("source_axis")
            if (d["name"] not in sizes and f is not None and f.shape is not None
                    and axis is not None and axis < len(f.shape)
                    and isinstance(f.shape[axis], int)):
                sizes[d["name"]] = f.shape[axis]
        if all(d["name"] in sizes for d in wanted):
            break
    return sizes
