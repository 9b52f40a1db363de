"""Byte-compare what two onnxfix versions write for every fixture (a speed-up must change nothing).

Run:
    python scripts/compare_outputs.py --base REF [--real] [--mode MODE ...]

REF (a commit, branch or tag) is exported with `git archive` into a temporary folder; this
checkout and REF then each rewrite every fixtures/**/*.onnx (and with --real every model of
/work/shared/real-models) in every mode with the check off, and `inspect` it, in a fresh
interpreter. Per model and mode the SHA-256 of the written file, the report's JSON (the temp
folder's path taken out), or the error class and message must be the same; so must the inspect
JSON. With --check the parity check runs too (as `rewrite` runs it: forked, under its limits), so
its verdicts, comparisons, tolerances and notes are compared as part of the report (a faster
check must check exactly as much); the measured errors are left out, as the original's unseeded
draws change them from run to run. Prints one line per difference and exits 1 when there is any.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REAL = Path("/work/shared/real-models")
MODES = ("input-noise", "constant", "deterministic", "seeded")

# Runs inside the interpreter of one version (its folder first on sys.path).
DUMP = r"""
import hashlib, json, sys, tempfile
from pathlib import Path
import onnxfix
from onnxfix import api
from onnxfix.options import CheckSettings, RewriteOptions

models, modes, check = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3] == "1"
out = {}
with tempfile.TemporaryDirectory() as tmp:
    for model in models:
        for mode in modes:
            target = Path(tmp) / "out.onnx"
            try:
                _, rep = api.run(model, RewriteOptions(mode=mode), CheckSettings(enabled=check),
                                 output=target, load_weights=False)
                digest = hashlib.sha256(target.read_bytes()).hexdigest()
                text = rep.to_json().replace(tmp, "<tmp>")
                if check:  # errors measured on fresh unseeded draws vary from run to run
                    text = json.loads(text)
                    for c in (text.get("parity") or {}).get("outputs", []):
                        c.pop("max_abs_err", None), c.pop("max_rel_err", None)
                    text = json.dumps(text)
                out[f"{model} {mode}"] = [digest, text]
            except Exception as e:  # noqa: BLE001 - the outcome is what is compared
                out[f"{model} {mode}"] = [type(e).__name__, str(e).replace(tmp, "<tmp>")]
            for extra in Path(tmp).iterdir():
                extra.unlink()
        try:
            out[f"{model} inspect"] = [onnxfix.inspect(model).to_json()]
        except Exception as e:  # noqa: BLE001
            out[f"{model} inspect"] = [type(e).__name__, str(e)]
print(json.dumps(out))
"""


def models(real: bool) -> list[str]:
    found = sorted(str(p) for p in (ROOT / "fixtures").rglob("*.onnx"))
    if real and REAL.is_dir():
        found += sorted(str(p) for p in REAL.glob("*.onnx"))
    return found


def dump(tree: Path, paths: list[str], modes: list[str], check: bool = False) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    proc = subprocess.run([sys.executable, "-c", DUMP, json.dumps(paths), json.dumps(modes),
                           "1" if check else "0"],
                          capture_output=True, text=True, env=env, check=False, cwd=tree)
    if proc.returncode:
        raise SystemExit(f"the run in {tree} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout)


def export(ref: str, into: Path) -> Path:
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "onnxfix"],
                             capture_output=True, check=True).stdout
    tar = into / "base.tar"
    tar.write_bytes(archive)
    with tarfile.open(tar) as t:
        t.extractall(into, filter="data")
    return into


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="the version to compare against")
    ap.add_argument("--real", action="store_true", help="also the real models")
    ap.add_argument("--mode", action="append", choices=MODES)
    ap.add_argument("--check", action="store_true",
                    help="run the parity check too and compare its results (slower)")
    args = ap.parse_args(argv)
    paths, modes = models(args.real), args.mode or list(MODES)
    with tempfile.TemporaryDirectory() as tmp:
        base = dump(export(args.base, Path(tmp)), paths, modes, args.check)
    head = dump(ROOT, paths, modes, args.check)
    differ = sorted(k for k in base.keys() | head.keys() if base.get(k) != head.get(k))
    for key in differ:
        print(f"DIFFERS | {key} | base {_short(base.get(key))} | now {_short(head.get(key))}")
    print(f"{len(base)} outcomes compared ({len(paths)} models x {len(modes)} modes + inspect), "
          f"{len(differ)} differ")
    return 1 if differ else 0


def _short(outcome) -> str:
    if outcome is None:
        return "missing"
    return hashlib.sha256(json.dumps(outcome).encode()).hexdigest()[:12] + " " + \
        str(outcome[0])[:60]


if __name__ == "__main__":
    raise SystemExit(main())
