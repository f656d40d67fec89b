"""The simulator is an oracle of its own: it takes no protocol fact from the gateway's code.

If it decided what Bybit accepts with the gateway's tables, a mapping bug in the gateway
would be mirrored by the simulator and no test could see it.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SIM_DIR = ROOT / "bybitsim"
GATEWAY_PACKAGES = {"common", "ingest", "publisher", "persister", "api"}
# Logging and settings plumbing only: neither decides what Bybit accepts.
ALLOWED = {"common.logs", "common.config"}


def gateway_imports(path: Path) -> list[str]:
    """``file:line module`` for every gateway module ``path`` imports outside ALLOWED."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # "from common import topics" imports common.topics
            names = ([f"{node.module}.{alias.name}" for alias in node.names]
                     if node.module in GATEWAY_PACKAGES else [node.module])
        elif isinstance(node, ast.Call):
            func = node.func
            dynamic = (isinstance(func, ast.Name) and func.id == "__import__") or (
                isinstance(func, ast.Attribute) and func.attr == "import_module")
            if dynamic:
                arg = node.args[0] if node.args else None
                names = [arg.value if isinstance(arg, ast.Constant) and isinstance(arg.value, str)
                         else "<dynamic import>"]
        for name in names:
            top = name.split(".")[0]
            if name == "<dynamic import>" or (top in GATEWAY_PACKAGES and not _allowed(name)):
                found.append(f"{path.name}:{node.lineno} {name}")
    return found


def _allowed(name: str) -> bool:
    return any(name == a or name.startswith(a + ".") for a in ALLOWED)


def test_no_simulator_module_imports_protocol_code_from_the_gateway():
    files = sorted(SIM_DIR.glob("*.py"))
    assert len(files) > 10, files
    found = [hit for f in files for hit in gateway_imports(f)]
    assert found == [], "bybitsim must decide protocol facts itself: " + ", ".join(found)


def test_the_import_check_sees_every_form(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("import common.topics\nfrom common import classify\nfrom ingest.plan import batches\n"
                   "import importlib\nimportlib.import_module('api.errors')\n"
                   "from common.logs import get_logger\nfrom common import config\nimport json\n")
    assert gateway_imports(src) == ["m.py:1 common.topics", "m.py:2 common.classify",
                                    "m.py:3 ingest.plan", "m.py:5 api.errors"]


def test_importing_the_simulator_loads_no_gateway_protocol_module():
    code = ("import sys, pkgutil, importlib, bybitsim\n"
            "for m in pkgutil.iter_modules(bybitsim.__path__):\n    if m.name != '__main__': importlib.import_module('bybitsim.' + m.name)\n"
            "print(' '.join(sorted(n for n in sys.modules if n.split('.')[0] in "
            f"{sorted(GATEWAY_PACKAGES)!r})))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    loaded = set(out.stdout.split())
    assert loaded <= ALLOWED | {"common"}, sorted(loaded - ALLOWED - {"common"})
