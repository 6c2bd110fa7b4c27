"""The architecture as a checked contract: import-linter's contracts in pyproject.toml hold for the tree,
and they have teeth (an upward import in a copy of the tree breaks them)."""
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    # lint-imports reads pyproject.toml from the working directory and imports the packages from sys.path.
    code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    return subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})


def test_the_import_contracts_hold():
    out = lint_imports(ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout


def test_an_upward_import_breaks_the_layers(tmp_path):
    for name in ("fcdm", "analysis"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    layers = tmp_path / "fcdm" / "models" / "layers.py"  # the science at the bottom reaching for the store
    layers.write_text(layers.read_text() + "\n\ndef _upward():\n    from fcdm.store import tracking  # noqa: F401\n")
    out = lint_imports(tmp_path)
    assert out.returncode != 0
    assert "fcdm.models.layers -> fcdm.store.tracking" in out.stdout
