"""The house rules of docs/DESIGN-NOTES.md 'Where things live', checked on the source."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import torch

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


# ---------------------------------------------------------------------------- issue 22

# Bottom to top: a module imports only from its own package or a lower level (lazy
# imports inside functions count too: they are the same dependency, paid later).
LEVELS = (
    ("errors", "version"),
    ("utils",),
    ("layers", "masking"),
    ("models",),
    ("data",),
    ("engine",),
    ("flops", "viz"),
    ("methods",),
    ("interop",),
    ("eval",),
    ("detection", "segmentation", "report"),
    ("config",),
    ("recipes",),
    ("launch",),
    ("api", "cli"),
    ("__init__", "__main__"),
)
LEVEL = {name: i for i, names in enumerate(LEVELS) for name in names}
METHOD_NAMES = re.compile(r"(?i)(?:^|[^a-z])(mae|lomar|ibot|simmim)(?:[^a-z]|$)")


def _module(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _targets(path: Path, modules: set[str]) -> set[str]:
    """The mimkit modules ``path`` imports (``from pkg import sub`` counts as ``pkg.sub``)."""
    found = set()
    for module, names in _imports(path):
        if not module.startswith("mimkit"):
            continue
        for name in names or [None]:
            sub = f"{module}.{name}" if name else module
            found.add(sub if sub in modules else module)
    return found - {_module(path)}


def _graph() -> dict[str, set[str]]:
    paths = {_module(p): p for p in _files(".")}
    return {m: _targets(p, set(paths)) & set(paths) for m, p in paths.items()}


def test_every_package_has_a_level():
    tops = {_top(_module(p)) for p in _files(".")}
    assert tops <= set(LEVEL), f"no level for {sorted(tops - set(LEVEL))}"


def test_imports_only_go_down_the_levels():
    upward = [
        f"{m} -> {t}"
        for m, targets in _graph().items()
        for t in targets
        if _top(m) != _top(t) and LEVEL[_top(t)] >= LEVEL[_top(m)]
    ]
    assert not upward, "imports that run back up the layers:\n" + "\n".join(sorted(upward))


def test_no_import_circles():
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert not circles, f"import circles: {circles}"


def _branch_strings(tree: ast.AST) -> list[str]:
    """String constants that decide a branch: in conditions, comparisons, and the
    arguments of isinstance / hasattr / getattr / startswith / endswith / match."""
    tests = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.If, ast.IfExp, ast.While, ast.Assert)):
            tests.append(node.test)
        elif isinstance(node, ast.comprehension):
            tests += node.ifs
        elif isinstance(node, (ast.Compare, ast.BoolOp, ast.match_case)):
            tests.append(node)
        elif isinstance(node, ast.Call):
            fn = node.func
            name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
            if name in ("isinstance", "hasattr", "getattr", "startswith", "endswith", "match"):
                tests += node.args
    return [
        n.value
        for t in tests
        for n in ast.walk(t)
        if isinstance(n, ast.Constant) and isinstance(n.value, str)
    ]


def _identifiers(tree: ast.AST) -> list[str]:
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            names.append(node.id)
        elif isinstance(node, ast.Attribute):
            names.append(node.attr)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.append(node.name)
        elif isinstance(node, ast.arg):
            names.append(node.arg)
        elif isinstance(node, ast.alias):
            names.append(node.asname or node.name)
    return names


def test_no_module_outside_methods_names_a_method():
    """Outside ``methods/`` code asks ``method_for`` and calls the contract: no method's
    name in an identifier or a branch, and no import of a method's own module."""
    found = []
    for path in _files("."):
        rel = path.relative_to(SRC)
        if rel.parts[0] == "methods":
            continue
        tree = ast.parse(path.read_text())
        words = _identifiers(tree) + _branch_strings(tree)
        found += [f"{rel}: {w!r}" for w in words if METHOD_NAMES.search(w)]
        for module, _ in _imports(path):
            if module.startswith("mimkit.methods."):
                found.append(f"{rel}: imports {module} (use mimkit.methods' contract)")
    assert not found, "method names outside methods/:\n" + "\n".join(found)


def test_models_hold_backbones_only():
    """Every model class registered from ``models/`` is a backbone: timm's contract."""
    from mimkit.models import create_model, list_models
    from mimkit.models.registry import model_class

    for name in list_models():
        cls = model_class(name)
        if cls is None or not cls.__module__.startswith("mimkit.models"):
            continue
        assert not hasattr(cls, "encoder_config"), f"{name} is a pretraining model in models/"
        with torch.device("meta"):
            model = create_model(name)
        for attr in ("forward_features", "forward_head", "no_weight_decay", "num_features"):
            assert hasattr(model, attr), f"{name} lacks {attr}"
