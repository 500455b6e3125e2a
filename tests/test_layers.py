"""The package reads top-down: every import points to a lower layer (or within its own package), with no cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "recsys_lightning"
# Lowest first: a module may import its own layer's modules and those of the layers below it.
LAYERS = (
    ("builtin", "errors", "infilling"),   # shipped files; the project's error types; the blank-infilling format
    ("data",),                            # the dataset side: adapters, schema, splits, indexing, textualize
    ("model",),                           # backbones in GLM mode
    ("generation",),                      # Trie beam search, candidate scoring, greedy infilling
    ("metrics", "prompts"),
    ("family",),                          # the task-family contract
    ("registry", "requests", "ratings", "texts"),  # what task families build on
    ("distributed", "module"),            # the LightningModule
    ("memory",),                          # the memory plan of a training step (meta-device network)
    ("pipeline",),                        # the data pipeline: datamodule, encoding, packing, sampling, cache
    ("recommender",),                     # a trained model by raw ids: recommend, score, rate, explain; export
    ("callbacks", "checkpoint_io"),       # results files, last.ckpt, RNG state; atomic checkpoint writes
    ("cli", "report", "serve"),           # subcommands; their one-line errors; the HTTP server
)
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every recsys_lightning module `path` imports, at any depth (function bodies and TYPE_CHECKING blocks too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("recsys_lightning"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("recsys_lightning"))
    return found


def layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else module
    if top not in RANK:
        raise AssertionError(f"{module} is in no layer of tests/test_layers.py: add it where it belongs")
    return RANK[top]


GRAPH = {module_name(p): imports(p) for p in sorted(PACKAGE.rglob("*.py")) if "builtin_" not in str(p)}


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if m != "recsys_lightning"))
def test_imports_point_down(module):
    upward = sorted(i for i in GRAPH[module] if layer(i) > layer(module))
    assert not upward, f"{module} imports upward: {upward}"


def test_no_import_cycle():
    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(GRAPH.get(module, ())):
            if state.get(target) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(target):] + [target]))
            if target in GRAPH and not state.get(target):
                visit(target, path + [target])
        state[module] = 2

    for module in sorted(GRAPH):
        if not state.get(module):
            visit(module, [module])
