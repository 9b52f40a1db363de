"""Real inputs for the parity check (--check-inputs FILE.npz, the API's check_inputs=).

They are read and validated before anything else runs, so a wrong file is one usage error
(exit 2), not a check that fails later for reasons the user cannot see.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass

import numpy as np
import onnx

from onnxfix.errors import UsageError, entries, one_line, param


@dataclass
class GivenInputs:
    arrays: dict[str, np.ndarray]
    dims: dict[str, int]  # symbolic dim name -> its size in these arrays
    source: str           # the file, or "check_inputs" for a dict


def load_check_inputs(value, model: onnx.ModelProto, fixed: dict[str, int]) -> GivenInputs:
    """value: a path to an .npz file or a dict name -> array; validated against the model
    and the dims fixed with `dims` (`fixed`)."""
    if isinstance(value, (str, os.PathLike)):
        arrays, source = _read_npz(value), str(value)
    elif isinstance(value, dict):
        arrays, source = dict(value), "check_inputs"
    else:
        raise UsageError(f"check_inputs: expected a path to an .npz file or a dict of arrays, "
                         f"got {type(value).__name__}")
    dims = _validate(arrays, model, source)
    for name, size in fixed.items():
        if dims.get(name, size) != size:
            raise UsageError(f"{_where(source)}: dim '{name}' is {dims[name]} in the inputs but "
                             f"{entries('dims', {name: size})}")
    return GivenInputs(arrays, dims, source)


def _where(source: str) -> str:
    """The parameter that gave the inputs: `check_inputs='f.npz'` (CLI: --check-inputs f.npz)."""
    return param("check_inputs", source, hint=True) if source != "check_inputs" else "check_inputs"


def _read_npz(path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise UsageError(f"{_where(str(path))}: not an .npz archive (one array per input "
                                 f"name, as numpy.savez writes)")
            return {name: data[name] for name in data.files}
    except UsageError:
        raise
    except FileNotFoundError:
        raise UsageError(f"{_where(str(path))}: no such file") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise UsageError(f"{_where(str(path))}: cannot be read as an .npz archive "
                         f"({one_line(e, 200)})") from None


def _validate(arrays: dict, model: onnx.ModelProto, source: str) -> dict[str, int]:
    inits = {t.name for t in model.graph.initializer}
    declared = {vi.name: vi for vi in model.graph.input}
    required = [n for n in declared if n not in inits]
    where = _where(source)
    unknown = sorted(set(arrays) - set(declared))
    if unknown:
        raise UsageError(f"{where}: {', '.join(map(repr, unknown))} is not an input of the "
                         f"model (its inputs: {', '.join(required) or 'none'})")
    missing = [n for n in required if n not in arrays]
    if missing:
        raise UsageError(f"{where}: no array for input {', '.join(map(repr, missing))}")
    dims: dict[str, int] = {}
    for name, value in arrays.items():
        arrays[name] = _checked(where, name, value, declared[name], dims)
    return dims


def _checked(where: str, name: str, value, vi: onnx.ValueInfoProto, dims: dict) -> np.ndarray:
    t = vi.type.tensor_type
    if not vi.type.HasField("tensor_type"):
        raise UsageError(f"{where}: input '{name}' is not a tensor; the check cannot feed it")
    array = np.asarray(value)
    want = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type))
    if array.dtype != want:
        raise UsageError(f"{where}: input '{name}' is {array.dtype}, the model wants {want}")
    if not t.HasField("shape"):
        return array
    shape = t.shape.dim
    if array.ndim != len(shape):
        raise UsageError(f"{where}: input '{name}' has rank {array.ndim} "
                         f"{list(array.shape)}, the model wants rank {len(shape)}")
    for k, d in enumerate(shape):
        have = int(array.shape[k])
        if d.HasField("dim_value") and d.dim_value != have:
            raise UsageError(f"{where}: input '{name}' has {list(array.shape)}; its dim {k} "
                             f"must be {d.dim_value}")
        if d.HasField("dim_param") and d.dim_param:
            dims.setdefault(d.dim_param, have)
    return array


__all__ = ["GivenInputs", "load_check_inputs"]
