"""Model-local functions that hold random nodes are inlined (and only those)."""

from __future__ import annotations

import onnx
import onnx.inliner

from onnxfix.errors import ModelError
from onnxfix.graph.find import iter_scoped, walk_graph
from onnxfix.ops import is_random_op

_ORIGIN_MARK = "onnxfix-inlined-from:"


def inline_random_functions(model: onnx.ModelProto) -> onnx.ModelProto:
    """Inline exactly the model-local functions that hold random nodes (transitively)."""
    if not model.functions:
        return model
    funcs = {(f.domain, f.name): f for f in model.functions}
    random_funcs = {key for key, f in funcs.items()
                    if any(is_random_op(n) for g in walk_graph(f) for n in g.node)}
    changed = True
    while changed:  # a function calling a random function must be inlined too
        changed = False
        for key, f in funcs.items():
            if key in random_funcs:
                continue
            if any((n.domain, n.op_type) in random_funcs for g in walk_graph(f)
                   for n in g.node):
                random_funcs.add(key)
                changed = True
    if not random_funcs or not _called(model, random_funcs):
        return model
    for key in random_funcs:
        for g in walk_graph(funcs[key]):
            for n in g.node:
                if is_random_op(n):
                    n.doc_string = f"{_ORIGIN_MARK}function {key[0]}::{key[1]}\n{n.doc_string}"
    try:
        return onnx.inliner.inline_selected_functions(model, sorted(random_funcs), exclude=False)
    except Exception as e:  # noqa: BLE001 - the inliner reports malformed functions
        raise ModelError(f"cannot inline the functions holding random nodes: {e}") from None


def _called(model: onnx.ModelProto, funcs: set) -> bool:
    return any((n.domain, n.op_type) in funcs for g, _, _ in iter_scoped(model)
               for n in g.node)


def take_origin_mark(node: onnx.NodeProto) -> bool:
    """Whether `take_origin` would change the node (its doc_string holds the mark)."""
    return node.doc_string.startswith(_ORIGIN_MARK)


def take_origin(node: onnx.NodeProto) -> str:
    doc = node.doc_string
    if not doc.startswith(_ORIGIN_MARK):
        return ""
    first, _, rest = doc.partition("\n")
    node.doc_string = rest
    return first.removeprefix(_ORIGIN_MARK)
