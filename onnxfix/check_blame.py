"""Whom to blame when a model of the check fails: the user's original, or onnxfix's own models.

The check runs models the user never wrote: the capture model (the original with its draws
exposed as outputs) and the input-noise twin. When one of them fails, the plain original is
run too: if it fails the same way, the original is at fault (the check is skipped with that
reason); if it runs, the failure is onnxfix's own and is said to be ("internal: ...").
"""

from __future__ import annotations

from .check_setup import inputs_word
from .compare import CheckSkipped, dims_text, one_line, run_all

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
    return CheckSkipped(f"internal: {TWIN} {how}: {one_line(error)}")


__all__ = ["capture_does_not_load", "capture_fails", "original_loads", "twin_fails"]
