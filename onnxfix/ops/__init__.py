"""The registry of random ops: one class per op (one module each), one table, one op list.

Adding an op is one module here: a RandomOp subclass (its shape, noise, transforms, capture
and distribution test) and a module-level `OPS = (TheOp(),)` with a `RANK` (table order); the
registry below collects every module's OPS and FORMS. Every pass and the parity check ask the
op's class, never its op_type.
"""

from __future__ import annotations

import importlib
import pkgutil

import onnx

from onnxfix.ops.affine import AffineOp
from onnxfix.ops.base import (
    FLOAT_TYPES,
    INDEX_TYPES,
    MAX_ELEMENTS,
    Dtypes,
    Improbable,
    Inconsistent,
    RandomOp,
    attribute_refs,
    attrs_of,
    distribution_of,
    dtype_name,
    np_dtype,
    wide_noise,
)
from onnxfix.ops.bernoulli import BernoulliOp
from onnxfix.ops.dropout import DropoutOp
from onnxfix.ops.multinomial import MultinomialOp
from onnxfix.ops.multinomial_gumbel import MultinomialGumbelOp
from onnxfix.ops.noise import FAMILIES, NORMAL, UNIFORM, below_one, standard_noise


def _collect() -> tuple[dict[str, RandomOp], dict[tuple[str, str], RandomOp]]:
    """Every op module's OPS (ordered by the module's RANK) and alternative FORMS."""
    modules = [importlib.import_module(f"{__name__}.{info.name}")
               for info in pkgutil.iter_modules(__path__)]
    modules.sort(key=lambda m: (getattr(m, "RANK", 100), m.__name__))
    table = {op.op_type: op for m in modules for op in getattr(m, "OPS", ())}
    forms = {key: op for m in modules for key, op in getattr(m, "FORMS", {}).items()}
    return table, forms


OP_TABLE, FORMS = _collect()

# Alternative forms of an op's rewrite, chosen by an option and recorded in the node's
# distribution as "form" (RewriteOptions(multinomial=...)); OP_TABLE holds the default.
MULTINOMIAL_FORMS = ("inverse-cdf", *sorted(f for t, f in FORMS if t == "Multinomial"))

# THE list of random op types (table order); everything else imports it.
RANDOM_OP_TYPES: tuple[str, ...] = tuple(OP_TABLE)

_DEFAULT_DOMAINS = ("", "ai.onnx")


def is_random_op(node: onnx.NodeProto) -> bool:
    """The node's op type is one of the table's (Dropout may still be in inference mode)."""
    return node.domain in _DEFAULT_DOMAINS and node.op_type in OP_TABLE


def spec_for(node: onnx.NodeProto, form: str | dict | None = None) -> RandomOp:
    """The node's op class; `form` (a form name, or a record's distribution holding one)
    picks an alternative rewrite of it."""
    if isinstance(form, dict):
        form = form.get("form")
    return FORMS.get((node.op_type, form or ""), OP_TABLE[node.op_type])


__all__ = [
    "FAMILIES", "FLOAT_TYPES", "FORMS", "INDEX_TYPES", "MAX_ELEMENTS", "NORMAL", "OP_TABLE",
    "RANDOM_OP_TYPES", "UNIFORM", "AffineOp", "BernoulliOp", "DropoutOp", "Dtypes",
    "Improbable", "Inconsistent", "MULTINOMIAL_FORMS", "MultinomialGumbelOp", "MultinomialOp",
    "RandomOp", "attribute_refs", "attrs_of", "below_one",
    "distribution_of", "dtype_name", "is_random_op", "np_dtype", "spec_for", "standard_noise",
    "wide_noise",
]
