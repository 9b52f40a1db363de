"""onnxfix.io: loading with one-line errors, and atomic writes that leave nothing half-written.

DESIGN.md "Safety": the input is never modified; the output appears atomically (temp file in
the same folder, then rename); external-data locations that are absolute, escape the model
folder or pass through links are refused; external-data models are supported.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper, parser

from onnxfix.errors import ModelError, OnnxfixError, UsageError
from onnxfix.io import load_model, parse_model_bytes, save_model_atomic, wire, write_text_atomic

FIXTURES = Path(__file__).parent.parent / "fixtures"
FIXTURE = FIXTURES / "ref1_dynamic_ts.onnx"

SMALL = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 3] x) => (float[N, 3] y) {
  y = Relu(x)
}
"""


def _small() -> onnx.ModelProto:
    return parser.parse_model(SMALL)


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _one_line(err: OnnxfixError) -> str:
    text = str(err)
    assert text and "\n" not in text, text
    assert "Traceback" not in text
    return text


def _umask() -> int:
    old = os.umask(0o022)
    os.umask(old)
    return old


# -- load_model ----------------------------------------------------------------------------

def test_load_fixture_matches_onnx_load():
    for path in (FIXTURE, str(FIXTURE)):
        model = load_model(path)
        assert isinstance(model, onnx.ModelProto)
        assert model == onnx.load(str(FIXTURE))


def test_load_does_not_modify_the_file(tmp_path: Path):
    path = tmp_path / "m.onnx"
    path.write_bytes(FIXTURE.read_bytes())
    before = path.stat().st_mtime_ns
    load_model(path)
    assert path.read_bytes() == FIXTURE.read_bytes()
    assert path.stat().st_mtime_ns == before
    assert _names(tmp_path) == ["m.onnx"]


@pytest.mark.parametrize(("make", "fragment"), [
    (lambda p: None, "no such file"),
    (lambda p: p.write_bytes(b""), "empty"),
    (lambda p: p.write_bytes(FIXTURE.read_bytes()[: FIXTURE.stat().st_size // 2]),
     "not a valid ONNX protobuf"),
    (lambda p: p.write_bytes(np.random.default_rng(0).bytes(4096)),
     "not a valid ONNX protobuf"),
    (lambda p: p.write_text("hello, this is text\n" * 10), "not a valid ONNX protobuf"),
    (lambda p: p.mkdir(), "folder"),
], ids=["missing", "empty", "truncated", "random-bytes", "text", "folder"])
def test_load_bad_files(make, fragment: str, tmp_path: Path):
    path = tmp_path / "m.onnx"
    make(path)
    with pytest.raises(ModelError) as info:
        load_model(path)
    assert info.value.exit_code == 3
    text = _one_line(info.value)
    assert str(path) in text
    assert fragment in text


def test_load_protobuf_without_graph(tmp_path: Path):
    path = tmp_path / "m.onnx"
    path.write_bytes(onnx.ModelProto(ir_version=8).SerializeToString())
    with pytest.raises(ModelError, match="no graph or no opset_import") as info:
        load_model(path)
    assert info.value.exit_code == 3


def test_load_model_without_opset_import(tmp_path: Path):
    model = _small()
    del model.opset_import[:]
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(ModelError, match="no graph or no opset_import"):
        load_model(path)


def test_load_model_rejected_by_checker(tmp_path: Path):
    model = parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2] x) => (float[2] y) {
          y = Add(x, undefined_tensor)
        }
    """)
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ModelError) as info:
        load_model(path)
    assert info.value.exit_code == 3
    text = _one_line(info.value)
    assert "invalid ONNX model" in text
    assert str(path) in text


def test_load_read_error_is_a_model_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "m.onnx"
    path.write_bytes(FIXTURE.read_bytes())

    real_open = os.open

    def denied(name, *args, **kwargs):
        if Path(name) == path:
            raise PermissionError(13, "Permission denied")
        return real_open(name, *args, **kwargs)

    monkeypatch.setattr(os, "open", denied)  # the file is opened once, by the skeleton reader
    with pytest.raises(ModelError, match="cannot read: Permission denied") as info:
        load_model(path)
    assert info.value.exit_code == 3


def test_parse_model_bytes_names_its_origin():
    model = parse_model_bytes(FIXTURE.read_bytes(), "somewhere")
    assert model == onnx.load(str(FIXTURE))
    with pytest.raises(ModelError, match="^somewhere: not a valid ONNX protobuf"):
        parse_model_bytes(b"\xff" * 64, "somewhere")


def test_error_types():
    assert issubclass(ModelError, OnnxfixError) and ModelError.exit_code == 3
    assert issubclass(UsageError, OnnxfixError) and UsageError.exit_code == 2


# -- external data -------------------------------------------------------------------------

def _external_model(folder: Path, location: str = "weights.bin") -> tuple[Path, np.ndarray]:
    """A MatMul model whose weight lives in `folder/location`."""
    folder.mkdir(parents=True, exist_ok=True)
    weight = np.arange(64 * 64, dtype=np.float32).reshape(64, 64)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])],
        [numpy_helper.from_array(weight, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = folder / "model.onnx"
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location=location, size_threshold=0)
    return path, weight


def _relocate(path: Path, location: str) -> None:
    """Point the model's external tensor at another location (file left as it is)."""
    model = onnx.load(str(path), load_external_data=False)
    for entry in model.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = location
    path.write_bytes(model.SerializeToString())


def test_load_external_data_from_the_model_folder(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch):
    path, weight = _external_model(tmp_path / "m")
    monkeypatch.chdir(path.parent)
    model = load_model("model.onnx")
    loaded = numpy_helper.to_array(model.graph.initializer[0])
    np.testing.assert_array_equal(loaded, weight)


def test_load_external_data_from_another_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path, weight = _external_model(tmp_path / "m")
    other = tmp_path / "elsewhere"
    other.mkdir()
    monkeypatch.chdir(other)
    model = load_model(path)
    np.testing.assert_array_equal(numpy_helper.to_array(model.graph.initializer[0]), weight)


@pytest.mark.parametrize("kind", ["escape", "absolute", "symlink", "missing"])
@pytest.mark.parametrize("cwd", ["model-folder", "elsewhere"])
def test_load_refuses_unsafe_external_data(kind: str, cwd: str, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch):
    path, _ = _external_model(tmp_path / "m")
    secret = tmp_path / "secret.bin"
    (path.parent / "weights.bin").rename(secret)
    if kind == "escape":
        _relocate(path, "../secret.bin")
    elif kind == "absolute":
        _relocate(path, str(secret))
    elif kind == "symlink":
        (path.parent / "link.bin").symlink_to(secret)
        _relocate(path, "link.bin")
    else:
        _relocate(path, "nothing-here.bin")
    if cwd == "model-folder":
        monkeypatch.chdir(path.parent)
    else:
        (tmp_path / "elsewhere").mkdir()
        monkeypatch.chdir(tmp_path / "elsewhere")
    with pytest.raises(ModelError) as info:
        load_model(path)
    assert info.value.exit_code == 3
    assert str(path) in _one_line(info.value)


# -- save_model_atomic ---------------------------------------------------------------------

def test_save_writes_the_model(tmp_path: Path):
    model = onnx.load(str(FIXTURE))
    out = tmp_path / "out.onnx"
    assert save_model_atomic(model, out) is None
    assert onnx.load(str(out)) == model
    assert _names(tmp_path) == ["out.onnx"]
    save_model_atomic(model, str(tmp_path / "str.onnx"))  # str paths too
    assert _names(tmp_path) == ["out.onnx", "str.onnx"]


def test_save_replaces_an_existing_file(tmp_path: Path):
    out = tmp_path / "out.onnx"
    out.write_bytes(b"old")
    save_model_atomic(_small(), out)
    assert onnx.load(str(out)) == _small()
    assert _names(tmp_path) == ["out.onnx"]


def test_save_bare_file_name_in_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    save_model_atomic(_small(), "out.onnx")
    assert _names(tmp_path) == ["out.onnx"]


def test_save_into_missing_folder(tmp_path: Path):
    out = tmp_path / "missing" / "out.onnx"
    with pytest.raises(UsageError, match="does not exist") as info:
        save_model_atomic(_small(), out)
    assert info.value.exit_code == 2
    assert str(out.parent) in _one_line(info.value)
    assert _names(tmp_path) == []


def test_save_onto_a_folder(tmp_path: Path):
    folder = tmp_path / "out.onnx"
    folder.mkdir()
    with pytest.raises(UsageError, match="folder") as info:
        save_model_atomic(_small(), folder)
    assert info.value.exit_code == 2
    assert _names(folder) == []
    assert _names(tmp_path) == ["out.onnx"]


def _fail_with(exc: BaseException):
    def fail(*args, **kwargs):
        raise exc
    return fail


@pytest.mark.parametrize("target", ["replace", "fsync"])
@pytest.mark.parametrize("existing", [False, True])
def test_save_failure_leaves_nothing(target: str, existing: bool, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch):
    out = tmp_path / "out.onnx"
    if existing:
        out.write_bytes(b"previous contents")
    monkeypatch.setattr(os, target, _fail_with(OSError(28, "No space left on device")))
    with pytest.raises(UsageError) as info:
        save_model_atomic(onnx.load(str(FIXTURE)), out)
    monkeypatch.undo()
    assert info.value.exit_code == 2
    text = _one_line(info.value)
    assert str(out) in text and "No space left on device" in text
    if existing:
        assert _names(tmp_path) == ["out.onnx"]
        assert out.read_bytes() == b"previous contents"
    else:
        assert _names(tmp_path) == []


def test_save_interrupted_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    out = tmp_path / "out.onnx"
    out.write_bytes(b"previous contents")
    monkeypatch.setattr(os, "replace", _fail_with(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        save_model_atomic(_small(), out)
    monkeypatch.undo()
    assert _names(tmp_path) == ["out.onnx"]
    assert out.read_bytes() == b"previous contents"


def test_save_temp_file_cannot_be_created(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(tempfile, "mkstemp", _fail_with(PermissionError(13, "Permission denied")))
    with pytest.raises(UsageError, match="Permission denied") as info:
        save_model_atomic(_small(), tmp_path / "out.onnx")
    assert info.value.exit_code == 2
    assert _names(tmp_path) == []


def test_save_refuses_models_over_the_protobuf_limit(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch):
    out = tmp_path / "out.onnx"
    out.write_bytes(b"previous contents")
    monkeypatch.setattr(wire, "PROTOBUF_LIMIT", 16)
    with pytest.raises(ModelError, match="2 GB") as info:
        save_model_atomic(onnx.load(str(FIXTURE)), out)
    assert info.value.exit_code == 3
    assert out.read_bytes() == b"previous contents"
    assert _names(tmp_path) == ["out.onnx"]


def test_save_temp_file_lives_next_to_the_output(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch):
    """The rename is atomic only within one folder: the temp file must be made there."""
    seen = []
    real = os.replace

    def spy(src, dst):
        seen.append((Path(src), Path(dst)))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    out = tmp_path / "out.onnx"
    save_model_atomic(_small(), out)
    [(src, dst)] = seen
    assert dst == out
    assert src.parent == tmp_path
    assert src.name.startswith(".out.onnx.") and src.name.endswith(".tmp")


def test_save_file_mode_follows_umask(tmp_path: Path):
    out = tmp_path / "out.onnx"
    save_model_atomic(_small(), out)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~_umask()


# -- write_text_atomic ---------------------------------------------------------------------

def test_write_text(tmp_path: Path):
    out = tmp_path / "report.json"
    write_text_atomic(out, '{"a": "\u00e9\u2192"}\n')
    assert out.read_text(encoding="utf-8") == '{"a": "\u00e9\u2192"}\n'
    write_text_atomic(str(out), "second")
    assert out.read_text(encoding="utf-8") == "second"
    assert _names(tmp_path) == ["report.json"]


def test_write_text_bare_file_name_in_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    write_text_atomic("r.json", "{}")
    assert _names(tmp_path) == ["r.json"]


def test_write_text_into_missing_folder(tmp_path: Path):
    with pytest.raises(UsageError) as info:
        write_text_atomic(tmp_path / "missing" / "r.json", "{}")
    assert info.value.exit_code == 2
    assert "r.json" in _one_line(info.value)
    assert _names(tmp_path) == []


@pytest.mark.parametrize("exc", [OSError(28, "No space left on device"), KeyboardInterrupt()],
                         ids=["oserror", "interrupt"])
def test_write_text_failure_leaves_nothing(exc: BaseException, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch):
    out = tmp_path / "r.json"
    out.write_text("previous")
    monkeypatch.setattr(os, "replace", _fail_with(exc))
    with pytest.raises((type(exc), UsageError)):
        write_text_atomic(out, "new")
    monkeypatch.undo()
    assert _names(tmp_path) == ["r.json"]
    assert out.read_text() == "previous"


@pytest.mark.parametrize("case", ["replace-fails", "path-is-a-folder"])
def test_write_text_failure_is_a_usage_error(case: str, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch):
    out = tmp_path / "r.json"
    if case == "replace-fails":
        monkeypatch.setattr(os, "replace", _fail_with(OSError(28, "No space left on device")))
    else:
        out.mkdir()
    with pytest.raises(UsageError) as info:
        write_text_atomic(out, "new")
    monkeypatch.undo()
    assert info.value.exit_code == 2
    assert str(out) in _one_line(info.value)
    expected = ["r.json"] if case == "path-is-a-folder" else []
    assert _names(tmp_path) == expected


def test_write_text_file_mode_follows_umask(tmp_path: Path):
    out = tmp_path / "r.json"
    write_text_atomic(out, "{}")
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~_umask()
