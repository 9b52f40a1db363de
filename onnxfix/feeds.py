"""`onnxfix.noise_feeds`: the standard noise a rewritten model needs for one run.

Everything is read from the model itself (the `onnxfix.noise_inputs` metadata, else each
noise input's doc_string), so deployment code never hard-codes names, shapes or dtypes.
"""

from __future__ import annotations

import json

import numpy as np
import onnx

from onnxfix.errors import ModelError, UsageError
from onnxfix.graph.shapes import fix_dims, infer_facts, model_dim_names, ort_symbolic_facts
from onnxfix.ops import FAMILIES, np_dtype
from onnxfix.ops.noise import standard_noise
from onnxfix.passes.tidy import NOISE_METADATA_KEY


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
        found.append({"name": name, "family": family, "elem_type": t.elem_type, "shape": shape,
                      "dims": meta.get(name, {}).get("dims") or []})
    return found


def _family_from_doc(doc: str) -> str | None:
    for family in FAMILIES:
        if doc.startswith(f"onnxfix noise input ({family})"):
            return family
    return None


def make_noise_feeds(model: onnx.ModelProto, dims: dict[str, int] | None = None,
                     seed: int | None = None,
                     rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    dims = dict(dims or {})
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
        feeds[entry["name"]] = standard_noise(rng, entry["family"], shape,
                                              np_dtype(entry["elem_type"]))
    return feeds


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
