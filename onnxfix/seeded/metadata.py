"""Seeded mode's model metadata: the `onnxfix.seed_input` entry naming the seed input and each
seeded draw (written by the tidy pass; read by the check, `inspect` and `noise_feeds`)."""

from __future__ import annotations

import json

import onnx

SEED_METADATA_KEY = "onnxfix.seed_input"


def seed_metadata(model: onnx.ModelProto) -> dict | None:
    """{"name": the seed input, "draws": [{draw, op_type, graph, family, dtype, key,
    iteration, noise}]}; None when the entry is absent or not valid. `noise` names the tensor
    holding the standard noise the generator made (absent in models of older onnxfix)."""
    for prop in model.metadata_props:
        if prop.key == SEED_METADATA_KEY:
            try:
                entry = json.loads(prop.value)
                return {"name": str(entry["name"]), "draws": list(entry["draws"])}
            except (ValueError, KeyError, TypeError):
                return None
    return None
