"""The package layering holds: the import-linter contracts in pyproject.toml pass, a backward import breaks them,
and the rules the contracts cannot express (torch.distributed in one module, no private names across packages)."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "resnet_tune"

lint_imports = shutil.which("lint-imports")
needs_linter = pytest.mark.skipif(lint_imports is None, reason="import-linter is not installed: "
                                                               "pip install -e '.[test]'")


def _lint(src: Path, cache: Path) -> subprocess.CompletedProcess:
    return subprocess.run([lint_imports, "--no-cache", str(ROOT / "pyproject.toml")], capture_output=True,  # type: ignore[list-item]
                          text=True, timeout=300, cwd=cache, env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"})


@needs_linter
def test_import_contracts_hold_and_a_backward_import_breaks_them(tmp_path: Path) -> None:
    kept = _lint(ROOT / "src", tmp_path)
    assert kept.returncode == 0, kept.stdout + kept.stderr
    assert "3 kept, 0 broken" in kept.stdout

    scratch = tmp_path / "src"
    shutil.copytree(ROOT / "src", scratch, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    model = scratch / "resnet_tune" / "models" / "resnet.py"
    model.write_text(model.read_text() + "\n\ndef _backwards():\n    from ..engine import trainer  # noqa: F401\n")
    broken = _lint(scratch, tmp_path)
    assert broken.returncode != 0
    assert "resnet_tune.models is not allowed to import resnet_tune.engine" in broken.stdout


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(module, imported names, level) of every import in a file, inside functions too."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.extend((a.name, [], 0) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            out.append((node.module or "", [a.name for a in node.names], node.level))
    return out


def test_only_engine_distributed_imports_torch_distributed() -> None:
    offenders = []
    for path in SRC.rglob("*.py"):
        if path == SRC / "engine" / "distributed.py":
            continue
        for module, names, _ in _imports(path):
            if module.startswith(("torch.distributed", "torch.nn.parallel")) or \
                    (module == "torch" and "distributed" in names):
                offenders.append(str(path.relative_to(SRC)))
    assert offenders == []


def test_no_package_imports_another_packages_private_names() -> None:
    """What ../shared/tools/private_imports.py checks, also where that tool is not at hand."""
    offenders = []
    for path in SRC.rglob("*.py"):
        package = path.relative_to(SRC).parts[0]
        for module, names, level in _imports(path):
            if not level and not module.startswith("resnet_tune"):
                continue
            parts = path.relative_to(SRC).parent.parts
            target = module.split(".") if not level else [*parts[:len(parts) - level + 1], *module.split(".")]
            target = [t for t in target if t and t != "resnet_tune"]
            same_package = bool(target) and target[0] == package
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            private_module = any(t.startswith("_") and not t.startswith("__") for t in target[1:])
            if not same_package and (private or private_module):
                offenders.append(f"{path.relative_to(SRC)}: {module} {private}")
    assert offenders == []


def test_import_resnet_tune_and_the_cli_do_not_import_torch() -> None:
    code = "import sys, resnet_tune, resnet_tune.cli; print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr


def test_tests_never_skip_on_the_projects_own_modules() -> None:
    """An import bug in resnet_tune must fail the suite, not skip tests: no importorskip of our own modules."""
    offenders = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "importorskip" and node.args
                    and isinstance(node.args[0], ast.Constant) and str(node.args[0].value).startswith("resnet_tune")):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, offenders
