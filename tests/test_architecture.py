"""The house rules of docs/DESIGN-NOTES.md 'Where things live', checked on the source."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "mimkit"
LOWER = ("data", "eval", "engine", "models", "layers", "utils", "masking.py")


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, imported names) of every import in ``path``, relative ones made absolute."""
    package = path.relative_to(SRC.parent).with_suffix("").parts[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = list(package[: len(package) - node.level + 1]) if node.level else []
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            out.append((module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
    return out


def _files(*names: str) -> list[Path]:
    found = []
    for name in names:
        p = SRC / name
        found += [p] if p.is_file() else sorted(p.rglob("*.py"))
    return found


def test_lower_packages_never_import_the_job_layers():
    for path in _files(*LOWER):
        for module, _ in _imports(path):
            assert not module.startswith(("mimkit.cli", "mimkit.recipes", "mimkit.api")), (
                f"{path.relative_to(SRC)} imports {module}"
            )


def test_data_and_utils_stay_below_the_engine():
    for path in _files("data", "utils"):
        for module, _ in _imports(path):
            assert not module.startswith("mimkit.engine"), f"{path.relative_to(SRC)}: {module}"


def test_no_private_names_across_packages():
    for path in _files("."):
        here = path.relative_to(SRC).parts[0]
        for module, names in _imports(path):
            if not module.startswith("mimkit."):
                continue
            there = module.split(".")[1]
            private = [n for n in names if n.startswith("_") and n != "__version__"]
            assert there == here.removesuffix(".py") or not private, (
                f"{path.relative_to(SRC)} imports {private} from {module}"
            )


def test_cli_modules_stay_thin():
    for path in _files("cli"):
        lines = len(path.read_text().splitlines())
        assert lines <= 150, f"{path.relative_to(SRC)} has {lines} lines"
