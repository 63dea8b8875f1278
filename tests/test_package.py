"""Packaging invariants: the dependency directions (import-linter contracts in pyproject.toml), and a light
``import nas_flex``."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _modules_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return set(out.stdout.split())


def test_import_nas_flex_is_light():
    mods = _modules_after("import nas_flex")
    assert not {"torch", "ray", "optuna", "pandas", "pyarrow"} & mods


def test_subpackages_are_lazy_attributes():
    """``nas_flex.<name>`` works after a bare ``import nas_flex`` for every public subpackage, loaded on first use."""
    names = ["models", "train", "tune", "leaderboard", "record", "layers", "data", "spaces", "export", "report"]
    statement = (
        "import importlib, nas_flex; assert 'nas_flex.models' not in sys.modules; "
        f"bad = [n for n in {names!r} if getattr(nas_flex, n) is not importlib.import_module('nas_flex.' + n)]; "
        "assert not bad, bad; assert set(dir(nas_flex)) >= set(" + repr(names) + ")"
    )
    assert {f"nas_flex.{n}" for n in names} <= _modules_after(statement)


def test_record_needs_no_torch():
    mods = _modules_after("import nas_flex; nas_flex.record.TrialStatus")
    assert "nas_flex.record" in mods and not {"torch", "ray", "optuna"} & mods


def test_errors_need_no_torch():
    assert "torch" not in _modules_after("import nas_flex.errors")


def test_layers_do_not_pull_in_search_or_tabular_stacks():
    mods = _modules_after("import nas_flex.layers; nas_flex.layers.build('conv', 1, 1)")
    assert not {"ray", "optuna", "pandas", "pyarrow"} & mods


def test_import_linter_contracts_hold():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.fail("import-linter is not installed: `make setup` installs it")
    out = subprocess.run([exe, "--no-cache"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("module, line, message", [
    ("kernels/__init__.py", "import nas_flex.train", "nas_flex.kernels is not allowed to import nas_flex.train"),
    ("export/__init__.py", "import nas_flex.tune", "nas_flex.export is not allowed to import nas_flex.tune"),
    ("models/__init__.py", "import optuna", "nas_flex.models is not allowed to import optuna"),
    # the one ignored import is spaces.validate -> optuna: spaces still may not import ray
    ("spaces/space.py", "import ray", "nas_flex.spaces is not allowed to import ray"),
    ("record.py", "import torch", "nas_flex.record is not allowed to import torch"),
])
def test_import_linter_catches_a_broken_contract(tmp_path, module, line, message):
    """The checker is live: the same contracts on a copy with one forbidden import added must fail, naming it."""
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    shutil.copytree(ROOT / "nas_flex", tmp_path / "nas_flex", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    path = tmp_path / "nas_flex" / module
    path.write_text(path.read_text() + f"\n{line}  # the forbidden import under test\n")
    env = {"PYTHONPATH": str(tmp_path), "PATH": str(Path(sys.executable).parent)}
    out = subprocess.run([exe, "--no-cache"], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert out.returncode != 0
    assert "BROKEN" in out.stdout and message in out.stdout, out.stdout
