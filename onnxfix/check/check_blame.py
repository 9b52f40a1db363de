"""Whom to blame when a model of the check fails: the user's original, or onnxfix's own models.

The check runs models the user never wrote: the capture model (the original with its draws
exposed as outputs) and the input-noise twin. When one of them fails, the plain original is
run too: if it fails the same way, the original is at fault (the check is skipped with that
reason); if it runs, the failure is onnxfix's own and is said to be ("internal: ...").
"""

from __future__ import annotations

import re

from onnxfix.check.check_setup import inputs_word
from onnxfix.check.compare import CheckSkipped, dims_text, run_all
from onnxfix.errors import one_line

CAPTURE = "the capture model (the original with its draws exposed as outputs)"
TWIN = "the input-noise twin the check compares with"


def original_loads(opener, original) -> object:
    """A session of the plain original; a skip saying it does not load otherwise."""
    try:
        return opener(original)
    except CheckSkipped:
        raise
    except Exception as e:  # noqa: BLE001 - onnxruntime raises several types
        raise CheckSkipped(f"the original model does not load in onnxruntime: "
                           f"{one_line(e)}") from None


def capture_does_not_load(opener, original, error: Exception) -> CheckSkipped:
    original_loads(opener, original)
    return CheckSkipped(f"internal: {CAPTURE} does not load in onnxruntime, though the "
                        f"original does: {one_line(error)}")


def capture_fails(opener, original, feeds: dict, dims: dict, error: Exception) -> CheckSkipped:
    what = inputs_word()
    try:
        run_all(original_loads(opener, original), feeds)
    except CheckSkipped:
        raise
    except Exception as e:  # noqa: BLE001
        return CheckSkipped(f"the original model fails on {what} ({dims_text(dims)}): "
                            f"{one_line(e)}")
    return CheckSkipped(f"internal: {CAPTURE} fails on {what} the original runs "
                        f"({dims_text(dims)}): {one_line(error)}")


def twin_fails(error: Exception, how: str) -> CheckSkipped:
    """how: "does not load", "rejects the deterministic model's noise"..."""
    return no_kernel(error) or CheckSkipped(f"internal: {TWIN} {how}: {one_line(error)}")


_NO_KERNEL = re.compile(r"Could not find an implementation for (\w+)\((\d+)\) node with name "
                        r"'([^']*)'")


def no_kernel(error: Exception) -> CheckSkipped | None:
    """A rewritten model onnxruntime cannot load for want of a kernel: a skip, not a failure.

    Called only once the original has loaded, so the missing kernel belongs to a node the
    rewrite added at the model's own (old) opset, e.g. Mul-6: the model is valid ONNX (the
    checker passed it), onnxruntime just does not implement that op version.
    """
    found = _NO_KERNEL.search(str(error))
    if found is None:
        return None
    op, version, node = found.groups()
    return CheckSkipped(f"onnxruntime has no kernel for {op}-{version} (node '{node}', valid at "
                        f"the model's opset), so the rewritten model cannot run in it; check "
                        f"it on the target runtime")


__all__ = ["capture_does_not_load", "capture_fails", "no_kernel", "original_loads", "twin_fails"]
