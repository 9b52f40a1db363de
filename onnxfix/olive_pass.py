"""onnxfix as a step of an Olive workflow (olive-ai >= 0.13).

Olive finds pass types only through its package config (a JSON mapping each pass type to its
module), so the route is: write a package config that is Olive's own plus `OnnxfixRewrite`,
then name the pass in the workflow:

    python -m onnxfix.olive_pass > olive_packages.json
    CI=1 OLIVE_DISABLE_TELEMETRY=1 olive run --config workflow.json \
        --package-config olive_packages.json

or, from Python, `olive.workflows.run(workflow, package_config=package_config())`.
(olive-ai 0.13.0 records a telemetry heartbeat before it reads OLIVE_DISABLE_TELEMETRY; with CI
set it records nothing.) The pass calls `onnxfix.rewrite` on the model file (the CLI's code
path) and writes `model.onnx` plus the JSON report `onnxfix_report.json` into the pass's output
folder. A failed parity check raises `onnxfix.ParityError`: Olive logs it and the workflow ends
without an output model.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

try:
    from olive.hardware import AcceleratorSpec
    from olive.model import ONNXModelHandler
    from olive.package_config import OlivePackageConfig
    from olive.passes import Pass
    from olive.passes.pass_config import BasePassConfig, PassConfigParam
except ImportError as error:  # pragma: no cover - exercised without olive-ai installed
    raise ImportError("onnxfix.olive_pass needs olive-ai: pip install olive-ai") from error

from onnxfix import api

PASS_TYPE = "OnnxfixRewrite"
MODEL_FILE = "model.onnx"
REPORT_FILE = "onnxfix_report.json"
PASS_ENTRY = {
    "module_path": f"onnxfix.olive_pass.{PASS_TYPE}",
    "supported_providers": ["*"],
    "supported_accelerators": ["*"],
    "supported_precisions": ["*"],
}
# Pass parameters with their types and defaults; `options` forwards any other keyword of
# `onnxfix.rewrite` (e.g. check_size, max_draw_bytes, or options added later) unchanged.
_PARAMS = {
    "mode": (str, "input-noise", "input-noise, constant, deterministic or seeded"),
    "seed": (int, 0, "seed of constant-mode draws and of the check's inputs"),
    "dims": (dict, None, "sizes for symbolic dims, e.g. {\"batch\": 1}"),
    "only": (list, None, "glob patterns selecting the random nodes to rewrite"),
    "exclude": (list, None, "glob patterns of random nodes to leave as they are"),
    "noise_dtype": (str, "same", "dtype noise inputs are fed in: same, float32, float16"),
    "check": (bool, True, "run the parity check in onnxruntime (fails the step on mismatch)"),
    "atol": (float, None, "absolute tolerance of the check"),
    "rtol": (float, None, "relative tolerance of the check"),
    "weights": (str, "same", "weight layout of the output: same, embedded, external"),
    "options": (dict, None, "further keyword options of onnxfix.rewrite"),
}


def package_config(include_olive_passes: bool = True) -> dict:
    """An Olive package config that knows OnnxfixRewrite (and Olive's own passes)."""
    config = {"passes": {}, "extra_dependencies": {}}
    if include_olive_passes:
        default = Path(OlivePackageConfig.get_default_config_path())
        config.update(json.loads(default.read_text()))
    config["passes"] = {**config["passes"], PASS_TYPE: dict(PASS_ENTRY)}
    return config


class OnnxfixRewrite(Pass):
    """Rewrite the random nodes of an ONNX model (onnxfix.rewrite) and prove it by parity."""

    @classmethod
    def _default_config(cls, accelerator_spec: AcceleratorSpec) -> dict[str, PassConfigParam]:
        return {name: PassConfigParam(type_=type_, default_value=default, description=text)
                for name, (type_, default, text) in _PARAMS.items()}

    @staticmethod
    def is_accelerator_agnostic(accelerator_spec: AcceleratorSpec) -> bool:
        return True

    def _run_for_config(self, model: ONNXModelHandler, config: type[BasePassConfig],
                        output_model_path: str) -> ONNXModelHandler:
        out_dir = Path(output_model_path)
        if out_dir.suffix == ".onnx":
            out_dir = out_dir.parent / out_dir.stem
        out_dir.mkdir(parents=True, exist_ok=True)
        options = {name: getattr(config, name) for name in _PARAMS if name != "options"}
        options.update(config.options or {})
        _, report = api.rewrite(model.model_path, output=out_dir / MODEL_FILE,
                                load_weights=False, **options)
        (out_dir / REPORT_FILE).write_text(report.to_json())
        return ONNXModelHandler(model_path=str(out_dir), onnx_file_name=MODEL_FILE)


def main() -> None:
    """`python -m onnxfix.olive_pass`: print the package config for `olive run`."""
    json.dump(package_config(), sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
