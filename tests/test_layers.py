"""The package's architecture as checked contracts: the import layers, and files a newcomer can read."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "supercm"


def test_the_import_layers_hold():
    """`lint-imports` with the layers contract of pyproject.toml: no module imports from a layer above
    its own (function-local imports included), so the package has no import cycle across layers."""
    pytest.importorskip("importlinter")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    code = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(no_cache=True, no_logo=True))"
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "1 kept, 0 broken" in res.stdout


def test_every_module_says_what_it_holds_and_stays_readable():
    """Each file under src/ opens with a docstring and stays under 600 lines; the Trainer class under 400."""
    for path in sorted(SRC.rglob("*.py")):
        text = path.read_text()
        tree = ast.parse(text)
        if path.name != "__main__.py":
            assert ast.get_docstring(tree), f"{path.relative_to(ROOT)} has no opening docstring"
        assert len(text.splitlines()) <= 600, f"{path.relative_to(ROOT)} has {len(text.splitlines())} lines (≤ 600)"
    train = ast.parse((SRC / "train.py").read_text())
    trainer = next(n for n in train.body if isinstance(n, ast.ClassDef) and n.name == "Trainer")
    assert trainer.end_lineno - trainer.lineno + 1 <= 400
