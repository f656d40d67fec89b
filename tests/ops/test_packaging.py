"""The project is installed (pyproject.toml): every program, script, test and bench module imports
the packages by name from any directory, with no sys.path edits and no PYTHONPATH; the pins in
pyproject.toml are the lock's."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

from tests.support import ROOT

PACKAGES = ("common", "ingest", "publisher", "persister", "api", "ops", "bybitsim", "tests.support",
            "tests.support.stores", "tests.support.gateway", "tests.support.ledger", "bench._gw", "bench._faults")


def test_every_package_imports_from_any_directory_without_pythonpath(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = "import importlib, sys; [importlib.import_module(m) for m in sys.argv[1:]]"
    out = subprocess.run([sys.executable, "-c", code, *PACKAGES], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def test_no_sys_path_edits_and_no_pythonpath():
    offenders = []
    for path in [*ROOT.glob("*/**/*.py"), ROOT / "supervisord.conf", ROOT / "Dockerfile", *ROOT.glob("scripts/*")]:
        if ".venv" in path.parts or path == Path(__file__):
            continue
        text = path.read_text(errors="replace")
        if re.search(r"sys\.path\.(insert|append)|PYTHONPATH", text):
            offenders.append(str(path.relative_to(ROOT)))
    assert not offenders


def _pins(lines) -> dict[str, str]:
    pins = {}
    for raw in lines:
        req = Requirement(raw)
        (spec,) = req.specifier       # exactly one pin each
        assert spec.operator == "==", raw
        pins[req.name.lower().replace("_", "-")] = spec.version
    return pins


def test_pyproject_pins_are_the_lock_pins():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = _pins(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        declared |= _pins(extra)
    locked = _pins(line for line in (ROOT / "requirements.txt").read_text().splitlines()
                   if line and not line.startswith("#"))
    assert {name: (v, locked.get(name)) for name, v in declared.items() if locked.get(name) != v} == {}
