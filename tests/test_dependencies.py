"""Every third-party import of the package is a declared dependency, and LICENSE is the license pyproject declares."""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("recsys_lightning/**/*.py", "tasks/*.py")  # tasks/ ships as recsys_lightning.builtin_tasks
OWN = {"recsys_lightning", "tests", "pkg"}


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares them (`PyYAML` = `pyyaml`, `huggingface_hub` = `huggingface-hub`)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    """`jsonargparse[signatures]>=4.32` -> `jsonargparse`."""
    return normalize(re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement).group(1))


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def imports(source: str) -> list[tuple[str, bool]]:
    """(module, imported lazily: inside a function) of every absolute import in `source`; `from a.b import c` gives
    `a.b` and `a.b.c` (c may be a module)."""
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((alias.name, lazy) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                found.append((child.module, lazy))
                found.extend((f"{child.module}.{alias.name}", lazy) for alias in child.names)
            visit(child, inner)

    visit(ast.parse(source), False)
    return found


def module_name(path: str) -> str:
    """`recsys_lightning/data/__init__.py` -> `recsys_lightning.data`; `tasks/x.py` -> its installed name."""
    parts = list(Path(path).with_suffix("").parts)
    if parts[0] == "tasks":
        parts[0:1] = ["recsys_lightning", "builtin_tasks"]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def always_loaded(files: dict[str, str], roots: set[str]) -> set[str]:
    """Files imported whenever the package runs: `roots` and what they import at module level, transitively
    (with every parent package of an imported module)."""
    by_module = {module_name(name): name for name in files}
    seen, todo = set(), [name for name in files if name in roots]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for module, lazy in imports(files[name]):
            parts = module.split(".")
            targets = {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
            todo.extend(by_module[t] for t in targets if t in by_module and not lazy)
    return seen


def undeclared(files: dict[str, str], required: set[str], extras: set[str], roots: set[str]) -> list[str]:
    """What is wrong with the third-party imports of `files` (name -> source): a module no installed distribution
    provides, one whose distribution is not a dependency, or an optional extra's module imported by code that always
    loads (at module level of a file that `roots` import at module level)."""
    providers = packages_distributions()
    loaded = always_loaded(files, roots)
    problems = []
    for name, source in files.items():
        for top, lazy in sorted({(module.split(".")[0], lazy) for module, lazy in imports(source)}):
            if top in sys.stdlib_module_names or top in OWN:
                continue
            dists = {normalize(d) for d in providers.get(top, [])}
            guarded = lazy or name not in loaded
            if not dists:
                problems.append(f"{name}: `import {top}`: no installed distribution provides it")
            elif not dists & required and not (guarded and dists & extras):
                where = "an optional extra imported where the package always loads" if dists & extras else \
                    "not declared"
                problems.append(f"{name}: `import {top}` ({', '.join(sorted(dists))}): {where}")
    return sorted(set(problems))


def test_every_third_party_import_is_a_declared_dependency():
    project = pyproject()["project"]
    required = {requirement_name(r) for r in project["dependencies"]}
    extras = {requirement_name(r) for group in project.get("optional-dependencies", {}).values() for r in group}
    files = {str(p.relative_to(ROOT)): p.read_text() for pattern in SOURCES for p in sorted(ROOT.glob(pattern))}
    assert len(files) > 50
    # what always loads: the package, the command line and the built-in families (discovery imports them)
    roots = {"recsys_lightning/__init__.py", "recsys_lightning/cli.py", *(f for f in files if f.startswith("tasks/"))}
    assert undeclared(files, required, extras, roots) == []


def test_the_check_flags_undeclared_and_eagerly_loaded_optional_imports():
    files = {"pkg/__init__.py": "", "pkg/main.py": "import yaml\nimport numpy\nfrom pkg import core\n",
             "pkg/core.py": "def f():\n    import numpy\n    from pkg import extra\n",
             "pkg/extra.py": "import numpy\nfrom no_such_module_xyz import thing\n"}
    roots = {"pkg/main.py"}
    assert undeclared(files, {"pyyaml"}, {"numpy"}, roots) == [
        "pkg/extra.py: `import no_such_module_xyz`: no installed distribution provides it",
        "pkg/main.py: `import numpy` (numpy): an optional extra imported where the package always loads"]
    assert "pkg/extra.py: `import numpy` (numpy): an optional extra imported where the package always loads" in \
        undeclared(files, {"pyyaml"}, {"numpy"}, roots | {"pkg/extra.py"})
    assert undeclared({"a.py": "import numpy\n"}, set(), set(), {"a.py"}) == ["a.py: `import numpy` (numpy): not declared"]


# SPDX id -> phrases the full standard text holds (its title, version line and last section)
LICENSE_TEXTS = {
    "Apache-2.0": ("Apache License", "Version 2.0, January 2004", "TERMS AND CONDITIONS FOR USE, REPRODUCTION, "
                   "AND DISTRIBUTION", "9. Accepting Warranty or Additional Liability.", "END OF TERMS AND CONDITIONS"),
}


def test_license_file_is_the_full_text_of_the_license_pyproject_declares():
    declared = pyproject()["project"]["license"]
    spdx = declared["text"] if isinstance(declared, dict) else declared
    assert spdx in LICENSE_TEXTS, f"pyproject declares license {spdx!r}; add its standard text's phrases here"
    text = " ".join((ROOT / "LICENSE").read_text().split())
    missing = [phrase for phrase in LICENSE_TEXTS[spdx] if phrase not in text]
    assert not missing, f"LICENSE is not the full {spdx} text: lacks {missing}"
    others = [other for other, phrases in LICENSE_TEXTS.items() if other != spdx and phrases[1] in text]
    assert not others
