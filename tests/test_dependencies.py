"""pyproject.toml says what ssl_dr uses: every third-party module imported under ``ssl_dr/`` is a declared
dependency (not one that happens to arrive through another package, as tqdm and PyYAML did), and the
launcher extras are split so that a SLURM install does not pull SQLAlchemy (the search extra's < 2 pin)."""

from __future__ import annotations

import ast
import re
import sys
from importlib import metadata

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import REPO

toml = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")
PROJECT = toml.loads((REPO / "pyproject.toml").read_text())["project"]
NAME = canonicalize_name(PROJECT["name"])

# import name -> distribution name, where they differ (the rest are the same, up to canonicalisation)
DISTRIBUTION = {"cv2": "opencv-python-headless", "yaml": "pyyaml", "sklearn": "scikit-learn", "PIL": "pillow",
                "hydra": "hydra-core"}
LAUNCHER_EXTRAS = ("slurm", "multigpu", "search")
# modules only an optional feature imports -> the extra that declares them (imported inside functions only, so
# that the commands still start without them and can name the extra)
OPTIONAL = {"onnxruntime": "onnx"}


def imported_modules() -> dict[str, list[tuple[str, bool]]]:
    """Third-party top-level module -> (ssl_dr file importing it, whether inside a function) for every import."""
    found: dict[str, list[tuple[str, bool]]] = {}
    for path in sorted((REPO / "ssl_dr").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        lazy = {id(node) for function in ast.walk(tree) if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef)
                for node in ast.walk(function)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for top in {name.split(".")[0] for name in names}:
                if top not in sys.stdlib_module_names and top != "ssl_dr":
                    found.setdefault(top, []).append((str(path.relative_to(REPO)), id(node) in lazy))
    return found


def extra(name: str) -> list[Requirement]:
    """An extra's requirements as pip resolves them: ``ssl_dr[a,b]`` (this project naming itself) is replaced
    by extras a and b, recursively. An extra that does not exist fails here, where pip would only warn."""
    extras = PROJECT["optional-dependencies"]
    assert name in extras, f"no extra {name!r} in pyproject.toml (extras: {sorted(extras)})"
    resolved = []
    for requirement in map(Requirement, extras[name]):
        if canonicalize_name(requirement.name) == NAME:
            resolved += [r for sub in sorted(requirement.extras) for r in extra(sub)]
        else:
            resolved.append(requirement)
    return resolved


def closure(requirements: list[Requirement]) -> tuple[set[str], set[str]]:
    """(installed distributions these requirements pull in, recursively; those that are not installed here, whose
    own requirements could not be read). Markers are evaluated for this interpreter and the requested extras."""
    seen: set[str] = set()
    missing: set[str] = set()
    todo = [(r, sorted(r.extras)) for r in requirements]
    while todo:
        requirement, extras = todo.pop()
        name = canonicalize_name(requirement.name)
        if name in seen or name in missing:
            continue
        try:
            needs = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            missing.add(name)
            continue
        seen.add(name)
        for need in map(Requirement, needs):
            if need.marker is None or any(need.marker.evaluate({"extra": e}) for e in [*extras, ""]):
                todo.append((need, sorted(need.extras)))
    return seen, missing


def test_every_imported_module_is_a_declared_dependency():
    declared = {canonicalize_name(Requirement(r).name) for r in PROJECT["dependencies"]}
    imported = imported_modules()
    assert {"torch", "tqdm", "yaml", "cv2"} <= set(imported)  # the scan sees the package
    undeclared = {module: sorted({file for file, _ in uses}) for module, uses in imported.items()
                  if module not in OPTIONAL and canonicalize_name(DISTRIBUTION.get(module, module)) not in declared}
    assert not undeclared, f"imported but not in pyproject's dependencies: {undeclared}"


def test_optional_modules_are_declared_by_their_extra_and_imported_lazily():
    imported = imported_modules()
    for module, extra_name in OPTIONAL.items():
        declared = {canonicalize_name(r.name) for r in extra(extra_name)}
        assert canonicalize_name(DISTRIBUTION.get(module, module)) in declared, (module, extra_name)
        eager = [file for file, lazy in imported.get(module, []) if not lazy]
        assert not eager, f"{module} (extra {extra_name}) is imported at module level in {eager}"


def test_the_import_name_table_agrees_with_the_installed_distributions():
    """A wrong entry in DISTRIBUTION would let the test above pass on a name nobody installs."""
    installed = metadata.packages_distributions()
    for module, distribution in DISTRIBUTION.items():
        if module in installed:
            assert canonicalize_name(distribution) in {canonicalize_name(d) for d in installed[module]}, module


def test_launchers_is_slurm_multigpu_and_search_and_only_search_pins_sqlalchemy():
    names = {extra_name: {canonicalize_name(r.name) for r in extra(extra_name)}
             for extra_name in (*LAUNCHER_EXTRAS, "launchers")}
    assert names["slurm"] == {"hydra-submitit-launcher"}
    assert names["multigpu"] == {"hydra-joblib-launcher"}
    assert names["search"] == {"hydra-optuna-sweeper", "sqlalchemy"}
    assert names["launchers"] == names["slurm"] | names["multigpu"] | names["search"]
    # the self-reference names this distribution, so `pip install ".[test,launchers]"` (README, .ci/run) resolves it
    assert PROJECT["optional-dependencies"]["launchers"] == [f"{PROJECT['name']}[{','.join(LAUNCHER_EXTRAS)}]"]
    sqlalchemy = [r for r in extra("search") if canonicalize_name(r.name) == "sqlalchemy"]
    assert not sqlalchemy[0].specifier.contains("2.0.0")  # optuna 2.x's sqlite storage breaks on SQLAlchemy 2


def test_the_slurm_extra_does_not_pull_sqlalchemy_through_its_dependencies():
    """What `pip install ".[slurm]"` brings, read from the installed packages' own metadata (the core
    dependencies included: they are installed with it)."""
    slurm = extra("slurm")
    if any(closure([r])[1] for r in slurm):
        pytest.skip("the slurm extra's packages are not installed here: no metadata to walk")
    core = [Requirement(r) for r in PROJECT["dependencies"]]
    pulled, missing = closure([*core, *slurm])
    assert "submitit" in pulled and "hydra-core" in pulled  # the walk follows dependencies
    assert "sqlalchemy" not in pulled and "sqlalchemy" not in missing
    assert "optuna" not in pulled | missing
    searched, _ = closure(extra("search"))
    assert "sqlalchemy" in searched  # the same walk does find it where it is pulled in


def test_readme_ci_docs_and_image_name_only_extras_that_exist():
    texts = [(REPO / "README.md").read_text(), (REPO / ".ci" / "run").read_text(), (REPO / "Dockerfile").read_text(),
             *(p.read_text() for p in (REPO / "docs").glob("*.md"))]
    used = {name.strip() for text in texts for group in re.findall(r"\.\[([\w,\s-]+)\]", text)
            for name in group.split(",")}
    assert {"test", "launchers", "slurm"} <= used
    assert used <= set(PROJECT["optional-dependencies"]), used - set(PROJECT["optional-dependencies"])
