"""Guard-rails that keep the code base in shape, run with the test suite (and so in CI).

- ruff: style, bugs, import order, private-member access and the public API's docstrings
  (configuration in pyproject.toml ``[tool.ruff]``);
- mypy on ``recon/`` (``[tool.mypy]``);
- import-linter: the layers never look up and recon/acquisition import no GUI toolkit
  (``[tool.importlinter]``), checked on the installed package layout, and shown to fail
  when a contract is violated.

``bash packaging/dev.sh lint`` runs this file alone; docs/architecture.md explains the rules.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _run(args: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_COLOR": "1"}
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def test_ruff_passes():
    out = _run([sys.executable, "-m", "ruff", "check", "--no-cache", "."], ROOT)
    assert out.returncode == 0, out.stdout + out.stderr


def test_mypy_passes_on_recon():
    out = _run([sys.executable, "-m", "mypy"], ROOT)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.fixture(scope="module")
def installed_layout(tmp_path_factory) -> Path:
    """A copy of the sources laid out as the installed package ``nvplive`` (recon/ as
    ``nvplive/recon`` …, from ``[tool.setuptools] package-dir``): import-linter needs one
    top-level package on disk, which the editable install only provides through an import hook."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    out = tmp_path_factory.mktemp("layout")
    for package, folder in config["package-dir"].items():
        target = out.joinpath(*package.split("."))
        target.mkdir(parents=True, exist_ok=True)
        for source in (ROOT / folder).glob("*.py"):
            shutil.copy2(source, target / source.name)
    return out


def _lint_imports(layout: Path, contract: str | None = None) -> subprocess.CompletedProcess:
    args = [str(BIN / "lint-imports"), "--config", str(ROOT / "pyproject.toml"), "--no-cache"]
    if contract is not None:
        args += ["--contract", contract]
    return _run(args, layout)


def test_import_contracts_are_kept(installed_layout):
    out = _lint_imports(installed_layout)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Contracts: 3 kept, 0 broken." in out.stdout


#: (contract, module of the probe, what it imports): one violation of each contract.
VIOLATIONS = [
    ("layers", "nvplive/recon/_probe.py", "import nvplive.acquisition.recording"),
    ("layers", "nvplive/acquisition/_probe.py", "from nvplive.app import main_window"),
    ("layers", "nvplive/app/_probe.py", "import nvplive.cli"),
    ("layers", "nvplive/errors.py", "import nvplive.recon.physics"),  # errors is the bottom layer
    ("no-gui-below-app", "nvplive/recon/_probe.py", "from PySide6 import QtCore"),
    ("no-gui-below-app", "nvplive/acquisition/_probe.py", "import pyqtgraph"),
    ("no-gui-below-app", "nvplive/acquisition/_probe.py", "from vispy import scene"),
    ("no-gui-below-app", "nvplive/recon/_probe.py", "import qtpy"),
    ("recon-knows-no-microscope", "nvplive/recon/_probe.py", "from pymmcore_plus import CMMCorePlus"),
]


@pytest.mark.parametrize(("contract", "module", "statement"), VIOLATIONS, ids=[f"{c}:{s}" for c, _, s in VIOLATIONS])
def test_import_contract_fails_when_violated(installed_layout, tmp_path, contract, module, statement):
    layout = tmp_path / "layout"
    shutil.copytree(installed_layout, layout)
    probe = layout / module
    probe.write_text((probe.read_text(encoding="utf-8") if probe.exists() else "") + f"\n{statement}\n", encoding="utf-8")
    out = _lint_imports(layout, contract)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "BROKEN" in out.stdout and "0 kept, 1 broken" in out.stdout, out.stdout
