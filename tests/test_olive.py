"""onnxfix as an Olive workflow step: the README's package_config route, run as users run it.

Skipped unless olive-ai is installed (it is not part of CI: see the README's Olive section).
Run it with a Python that has olive-ai, e.g. `/work/venvs/olive/bin/python -m pytest
tests/test_olive.py`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import FIXTURES, ROOT, session
from typer.testing import CliRunner

import onnxfix
from onnxfix.cli import app
from onnxfix.feeds import noise_inputs

pytest.importorskip("olive", reason="olive-ai is not installed")
from onnxfix import olive_pass  # noqa: E402

BLOCK = re.compile(r"```(\w*)\n(.*?)```", re.S)
README = (ROOT / "README.md").read_text()
PACKAGES_CMD = "python -m onnxfix.olive_pass > olive_packages.json"
RUN_CMD = ("CI=1 OLIVE_DISABLE_TELEMETRY=1 olive run --config workflow.json "
           "--package-config olive_packages.json")


def _readme_workflow() -> dict:
    blocks = [body for lang, body in BLOCK.findall(README) if lang == "json"
              and olive_pass.PASS_TYPE in body]
    assert len(blocks) == 1
    return json.loads(blocks[0])


@pytest.fixture(scope="module")
def olive_run(tmp_path_factory):
    """The README recipe, in a fresh folder, with a private home (telemetry leaves no trace)."""
    work = tmp_path_factory.mktemp("olive")
    (work / "fixtures").symlink_to(FIXTURES, target_is_directory=True)
    (work / "workflow.json").write_text(json.dumps(_readme_workflow()))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HOME": str(work / "home"),
           "XDG_CACHE_HOME": str(work / "home" / ".cache"), "CI": "1",
           "OLIVE_DISABLE_TELEMETRY": "1"}
    packages = subprocess.run([sys.executable, "-m", "onnxfix.olive_pass"], cwd=work, env=env,
                              capture_output=True, text=True, check=True)
    (work / "olive_packages.json").write_text(packages.stdout)
    proc = subprocess.run([sys.executable, "-m", "olive", "run", "--config", "workflow.json",
                           "--package-config", "olive_packages.json"], cwd=work, env=env,
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work


def test_readme_shows_the_commands_this_test_runs():
    console = "\n".join(body for lang, body in BLOCK.findall(README) if lang == "console")
    assert f"$ {PACKAGES_CMD}" in console
    assert f"$ {RUN_CMD}" in console


def test_package_config_adds_the_pass_to_olives_own():
    config = olive_pass.package_config()
    assert config["passes"]["OnnxfixRewrite"]["module_path"] == "onnxfix.olive_pass.OnnxfixRewrite"
    assert "OnnxConversion" in config["passes"]  # Olive's own passes stay available
    assert olive_pass.package_config(include_olive_passes=False)["passes"].keys() == {
        "OnnxfixRewrite"}


def test_olive_workflow_matches_the_cli(olive_run: Path, tmp_path: Path):
    workflow = _readme_workflow()
    out = olive_run / workflow["output_dir"]
    report = json.loads((out / "onnxfix_report.json").read_text())
    cli_out, cli_report = tmp_path / "cli.onnx", tmp_path / "cli.json"
    result = CliRunner().invoke(app, ["rewrite", str(FIXTURES / "ref3_dynamic_ts.onnx"),
                                      str(cli_out), "--seed", "7", "--report", str(cli_report),
                                      "-q"])
    assert result.exit_code == 0, result.output
    cli = json.loads(cli_report.read_text())
    assert report["parity"]["status"] == cli["parity"]["status"] == "passed"
    assert report["new_inputs"] == cli["new_inputs"] and len(report["new_inputs"]) == 3
    model = onnx.load(str(out / "model.onnx"))
    assert noise_inputs(model) == noise_inputs(onnx.load(str(cli_out)))

    x = np.random.default_rng(2).standard_normal((3, 10)).astype(np.float32)
    feeds = {"x": x, **onnxfix.noise_feeds(model, dims={"batch": 3}, seed=4)}
    (ours,) = session(model).run(None, feeds)
    (theirs,) = session(onnx.load(str(cli_out))).run(None, feeds)
    assert np.array_equal(ours, theirs)


def test_olive_records_no_telemetry(olive_run: Path):
    cache = olive_run / "home" / ".cache" / "Microsoft" / "DeveloperTools" / ".onnxruntime"
    assert not (cache / "cache" / "olive.json").exists()
    assert not (cache / "deviceid").exists()


def test_a_parity_failure_fails_the_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Olive logs the ParityError and the workflow has no output model (nothing is written)."""
    import onnxfix.check.conditional

    for name, value in (("CI", "1"), ("OLIVE_DISABLE_TELEMETRY", "1"),
                        ("HOME", str(tmp_path / "home")),
                        ("XDG_CACHE_HOME", str(tmp_path / "home" / ".cache"))):
        monkeypatch.setenv(name, value)
    real = onnxfix.check.conditional.standard_noise

    def off_by_one(*args, **kwargs):
        noise = np.asarray(real(*args, **kwargs))
        return (noise + np.asarray(1.0, dtype=noise.dtype)).astype(noise.dtype)

    monkeypatch.setattr(onnxfix.check.conditional, "standard_noise", off_by_one)
    from olive.workflows import run

    monkeypatch.chdir(tmp_path)  # Olive's default cache is .olive-cache in the working folder
    workflow = {**_readme_workflow(), "output_dir": str(tmp_path / "out"),
                "cache_dir": str(tmp_path / "cache")}
    workflow["input_model"] = {**workflow["input_model"],
                               "model_path": str(FIXTURES / "ref3_dynamic_ts.onnx")}
    output = run(workflow, package_config=olive_pass.package_config(), tempdir=str(tmp_path))
    assert not output.has_output_model()
    assert not (tmp_path / "out" / "model.onnx").exists()
