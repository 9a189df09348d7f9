"""The layering rule is a test: import-linter's contracts in pyproject.toml ([tool.importlinter]) must hold.

    cli > pipeline > agents > envs > search > latency | data | models > core > base (config, errors,
    registry, atomic); nothing imports autoprune.cli.

import-linter (grimp) reads a package from one directory, but pyproject's
[tool.setuptools.package-dir] can install subpackages from elsewhere (envs/ -> autoprune.envs,
agents/ -> autoprune.agents). So the check runs on a copy of the sources laid out as they are
installed, in a temporary directory; with no such mapping the copy is just autoprune/. The copy also
lets a test break the layering on purpose without touching the tree.

Run as a script (`python tests/test_layers.py`, as .ci/run does) to print import-linter's report.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

pytest.importorskip("importlinter", reason="import-linter is in the dev extra: pip install -e '.[dev]'")

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"
RUN_LINT_IMPORTS = (
    "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
)


def stage_installed_layout(dest: Path) -> Path:
    """Copy the package's .py files into ``dest`` in their installed layout; return ``dest``."""
    setuptools_cfg = tomllib.loads(PYPROJECT.read_text())["tool"].get("setuptools", {})
    package_dir = setuptools_cfg.get("package-dir") or {"autoprune": "autoprune"}
    package_dir.setdefault("autoprune", "autoprune")
    # parents before children, so a mapped subpackage lands inside its (already copied) parent
    for package, source in sorted(package_dir.items(), key=lambda item: item[0].count(".")):
        if package != "autoprune" and not package.startswith("autoprune."):
            continue
        target = dest.joinpath(*package.split("."))
        if target.exists():  # the parent's copy already holds it (mapped to its usual place)
            shutil.rmtree(target)
        shutil.copytree(ROOT / source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


def lint_imports(staged: Path) -> subprocess.CompletedProcess:
    """Run ``lint-imports`` with this repo's contracts on the staged copy."""
    return subprocess.run(
        [sys.executable, "-c", RUN_LINT_IMPORTS, str(PYPROJECT), "--no-cache", "--no-logo"],
        cwd=staged,
        env={**os.environ, "PYTHONPATH": str(staged)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_layering_contracts_are_kept(tmp_path):
    result = lint_imports(stage_installed_layout(tmp_path))
    report = result.stdout + result.stderr
    assert result.returncode == 0, (
        f"the layering rule is broken (see pyproject.toml [tool.importlinter]):\n{report}"
    )
    assert "0 broken" in report and "BROKEN" not in report, report


@pytest.mark.parametrize(
    ("module", "violation", "broken"),
    [
        ("autoprune/core/plan.py", "import autoprune.cli", ["autoprune.core.plan -> autoprune.cli"]),
        (
            "autoprune/envs/rewards.py",
            "import autoprune.agents.ddpg",
            ["autoprune.envs.rewards -> autoprune.agents.ddpg"],
        ),
        ("autoprune/__init__.py", "import autoprune.cli", ["autoprune -> autoprune.cli"]),
    ],
    ids=["core-imports-cli", "envs-imports-agents", "root-imports-cli"],
)
def test_breaking_the_layering_fails_the_check(tmp_path, module, violation, broken):
    """The check has teeth: one upward import in the copy makes lint-imports fail and name it."""
    staged = stage_installed_layout(tmp_path)
    path = staged / module
    path.write_text(path.read_text() + f"\n{violation}  # deliberate layering violation\n")
    result = lint_imports(staged)
    report = result.stdout + result.stderr
    assert result.returncode != 0, report
    assert "BROKEN" in report, report
    for line in broken:
        assert line in report, report


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        proc = lint_imports(stage_installed_layout(Path(tmp)))
    sys.stdout.write(proc.stdout)
    sys.stderr.write(proc.stderr)
    sys.exit(proc.returncode)
