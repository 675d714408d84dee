"""The trust boundary as an import contract (import-linter, configured in pyproject.toml):
node and coordinator never import each other, shared code imports neither, and neither side
imports the lab or the CLI.  The contract is checked on the real tree, and shown to fail on a
copy of the tree into which a forbidden import was planted."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}  # the tree in `root`, not the installed one
    return subprocess.run([str(LINT), "--no-cache"], cwd=root, env=env, capture_output=True, text=True, timeout=120)


def _copy_with(tmp_path: Path, module: str, line: str) -> Path:
    shutil.copytree(ROOT / "fedtune", tmp_path / "fedtune", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / (module.replace(".", "/") + ".py")
    target.write_text(target.read_text() + f"\n{line}\n")
    return tmp_path


def test_the_package_keeps_its_import_contract():
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 kept, 0 broken" in result.stdout


@pytest.mark.parametrize("module, line, broken", [
    ("fedtune.node.training", "import fedtune.coordinator.strategy", "node and coordinator never import each other"),
    ("fedtune.coordinator.rounds", "from fedtune.node.privacy import ledger",
     "node and coordinator never import each other"),
    ("fedtune.common.adapters", "import fedtune.node.local_data", "shared code imports neither side"),
    ("fedtune.node.client_app", "import fedtune.lab.simulation", "neither side imports the lab or the CLI"),
    ("fedtune.release.model_card", "import fedtune.node.privacy.ledger", "a release is made from the run's files alone"),
])
def test_the_contract_fails_when_a_forbidden_import_is_added(tmp_path, module, line, broken):
    result = _lint(_copy_with(tmp_path, module, line))
    assert result.returncode != 0
    assert f"{broken}" in result.stdout and "BROKEN" in result.stdout
    assert module in result.stdout  # the report names the offending module
