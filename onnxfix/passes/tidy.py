"""Tidy pass: what the rewrite made unused goes, nothing else changes."""

from __future__ import annotations

import onnx

from onnxfix.graph.find import iter_graphs

_DEFAULT_DOMAINS = {"", "ai.onnx"}


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
    gone = (used_domains(before) - used_domains(after)) - _DEFAULT_DOMAINS
    dropped = [imp.domain for imp in after.opset_import if imp.domain in gone]
    if dropped:
        kept = [imp for imp in after.opset_import if imp.domain not in gone]
        del after.opset_import[:]
        after.opset_import.extend(kept)
    return dropped
