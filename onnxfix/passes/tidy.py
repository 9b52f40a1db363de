"""Tidy pass: what the rewrite made unused goes, the noise inputs are listed in metadata.

Effect, in place on the spliced model: opset imports that only the inlined functions used are
dropped, and the `onnxfix.noise_inputs` metadata entry lists every noise input (appended to
what an earlier rewrite recorded). Nothing else changes.
"""

from __future__ import annotations

import json

import onnx
from onnx import helper

from onnxfix.graph.find import iter_graphs
from onnxfix.seeded.metadata import SEED_METADATA_KEY

_DEFAULT_DOMAINS = {"", "ai.onnx"}
NOISE_METADATA_KEY = "onnxfix.noise_inputs"


def tidy(before: onnx.ModelProto, after: onnx.ModelProto,
         noise_meta: list[dict] | None = None, seed_meta: dict | None = None) -> onnx.ModelProto:
    """call(after) -> after, tidied in place (`before`: the model the rewrite read).
    seed_meta: seeded mode's seed input and draws, stored as `onnxfix.seed_input`."""
    if noise_meta:
        record_noise_metadata(after, noise_meta)
    if seed_meta:
        props = {p.key: p.value for p in after.metadata_props}
        helper.set_model_props(after, {**props, SEED_METADATA_KEY: json.dumps(seed_meta)})
    drop_unused_opset_imports(before, after)
    return after


def record_noise_metadata(model: onnx.ModelProto, entries: list[dict]) -> None:
    """Append `entries` to the model's `onnxfix.noise_inputs` list (other props unchanged)."""
    existing = []
    props = {}
    for prop in model.metadata_props:
        if prop.key == NOISE_METADATA_KEY:
            try:
                existing = json.loads(prop.value)
            except ValueError:
                existing = []
        else:
            props[prop.key] = prop.value
    helper.set_model_props(model, {**props, NOISE_METADATA_KEY: json.dumps(existing + entries)})


def used_domains(model: onnx.ModelProto) -> set[str]:
    """Domains that a node (anywhere: subgraphs, function bodies) or a local function uses."""
    used = {f.domain for f in model.functions}
    for container, _ in iter_graphs(model):
        used.update(n.domain for n in container.node)
    return used


def drop_unused_opset_imports(before: onnx.ModelProto, after: onnx.ModelProto) -> list[str]:
    """Drop the opset imports the rewrite left unused (an inlined function's domain).

    Readers such as OpenVINO refuse a model importing a domain they do not know, even when no
    node uses it. The default domain and imports that were unused already stay as they were.
    Returns the dropped domains.
    """
    if all(imp.domain in _DEFAULT_DOMAINS for imp in after.opset_import):
        return []  # nothing but the default domain to drop: no walk of two whole models
    gone = (used_domains(before) - used_domains(after)) - _DEFAULT_DOMAINS
    dropped = [imp.domain for imp in after.opset_import if imp.domain in gone]
    if dropped:
        kept = [imp for imp in after.opset_import if imp.domain not in gone]
        del after.opset_import[:]
        after.opset_import.extend(kept)
    return dropped
