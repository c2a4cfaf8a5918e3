"""The layout stays readable: no import cycle between ``ssl_dr`` modules, no layer importing a higher one, no
module over 400 lines, no module docstring over 15 lines, the launch side and the report free of torch (they run
while Hydra composes, or on a laptop without a GPU)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ssl_dr"
MAX_LINES = 400
MAX_DOCSTRING_LINES = 15


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _type_checking_only(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def import_graph() -> dict[str, set[str]]:
    """Module -> the ``ssl_dr`` modules it imports, anywhere in the file (lazy imports inside functions count:
    a cycle hidden in a function is still a cycle), except under ``if TYPE_CHECKING:``."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        is_package = path.name == "__init__.py"
        edges = set()
        for node in ast.walk(tree):
            if _type_checking_only(node, parents):
                continue
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    anchor = name.split(".") if is_package else name.split(".")[:-1]
                    anchor = anchor[:len(anchor) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                names = (f"{base}.{alias.name}" for alias in node.names)
                targets = [full if full in modules else base for full in names]
            edges |= {t for t in targets if t in modules and t != name}
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _without_package_inits(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """A package's ``__init__`` re-exporting its submodules is not a cycle with them: Python imports the
    package before the submodule either way."""
    return {name: {t for t in targets if not name.startswith(f"{t}.")} for name, targets in graph.items()}


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_between_ssl_dr_modules():
    graph = _without_package_inits(import_graph())
    assert len(graph) > 30  # the walk saw the package
    assert cycles(graph) == []


LAYERS = ("config_dir", "errors", "run_contract", "ranks", "data", "models", "pretexts", "inference", "launch",
          "probes", "training", "reporting", "commands")
"""``ssl_dr``'s layers, lowest first (docs/architecture.md): a module may import its own layer and those below."""


def layer(module: str) -> str:
    """A module's layer: its package under ``ssl_dr``; the top-level modules are the commands (``config_dir``,
    where the configs are, is the one below everything)."""
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in LAYERS:
        return parts[1]
    return "commands"


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{module} ({layer(module)}) imports {target} ({layer(target)})"
                  for module, targets in graph.items() for target in targets
                  if LAYERS.index(layer(target)) > LAYERS.index(layer(module)))


def test_no_layer_imports_a_higher_one():
    assert len({layer(m) for m in _modules()}) == len(LAYERS)  # every layer has modules: the names are right
    assert upward_imports(import_graph()) == []


def test_the_layer_rule_catches_an_upward_import():
    assert upward_imports({"ssl_dr.models.classifier": {"ssl_dr.training.loggers"},
                           "ssl_dr.training.phases": {"ssl_dr.models.classifier"}}) == [
        "ssl_dr.models.classifier (models) imports ssl_dr.training.loggers (training)"]


def test_no_module_over_400_lines():
    long = {name: n for name, path in _modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}, f"split these along their seams: {long}"


def docstring_lines(source: str) -> int:
    """Lines a module's docstring spans, its closing quotes included (0 without one)."""
    doc = ast.get_docstring(ast.parse(source), clean=False)
    return 0 if doc is None else doc.count("\n") + 1


def test_the_docstring_count_sees_every_line():
    assert docstring_lines('"""One line."""\nx = 1\n') == 1
    assert docstring_lines('"""' + "".join(f"line {i}\n" for i in range(16)) + '"""\nx = 1\n') == 17
    assert docstring_lines("x = 1\n") == 0


def test_module_docstrings_are_a_few_lines():
    """A module docstring says what the module does and why; history, measurements and derivations go to docs/."""
    long = {name: n for name, path in _modules().items()
            if (n := docstring_lines(path.read_text())) > MAX_DOCSTRING_LINES}
    assert long == {}, f"shorten these module docstrings to a few lines, the detail to docs/: {long}"


@pytest.mark.parametrize("module", ["ssl_dr.report", "ssl_dr.reporting.writer", "ssl_dr.reporting.sweep_end",
                                    "ssl_dr.launch.resolvers", "ssl_dr.launch.sweep_progress",
                                    "ssl_dr.launch.gpu_slots", "ssl_dr.launch.guards", "ssl_dr.launch.objective"])
def test_launch_side_and_report_import_without_torch(module):
    code = f"import sys, {module}; print(sorted(m for m in ('torch', 'lightning') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
