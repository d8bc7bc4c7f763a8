"""The dependency direction of ``src/dltricks``, enforced.

Each top-level package (or module) of dltricks sits on a layer and may import only from the layers
below it (and from itself)::

    errors, config, utils  <-  layers  <-  models  <-  measure
                                                   <-  data  <-  tasks  <-  train  <-  compress  <-  search
    <-  evidence  <-  experiments  <-  tips  <-  serve  <-  commands  <-  cli

``measure`` depends only on models and layers; ``data`` only on the base modules (reading files and
batching tensors knows nothing about models or losses); ``tasks`` adds losses, metrics and evaluation on
top of ``data``. Every import counts, also one inside a function: a lazy import is still a dependency.
The test walks the source with :mod:`ast`, so it needs no import and sees every module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "dltricks"

BASE = {"errors", "config", "utils"}
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "config": {"errors"},
    "utils": {"errors"},
    "layers": BASE,
    "models": BASE | {"layers"},
    "__init__": {"errors", "models"},  # `import dltricks` builds the model registry
    "measure": BASE | {"layers", "models", "__init__"},
    "data": BASE,
    "tasks": BASE | {"data", "layers", "models", "measure", "__init__"},
}
ALLOWED["train"] = ALLOWED["tasks"] | {"tasks"}
ALLOWED["fewshot"] = ALLOWED["train"] | {"train"}  # episodes, prototypical networks (docs/transfer.md)
ALLOWED["compress"] = ALLOWED["train"] | {"train", "fewshot"}
ALLOWED["search"] = ALLOWED["compress"] | {"compress"}  # hyper-parameter search: its trials are fit runs
ALLOWED["evidence"] = ALLOWED["search"] | {"search"}
ALLOWED["experiments"] = ALLOWED["evidence"] | {"evidence"}
ALLOWED["tips"] = ALLOWED["experiments"] | {"experiments"}
ALLOWED["serve"] = ALLOWED["tips"] | {"tips"}  # the web app shows runs and the evidence report
ALLOWED["commands"] = ALLOWED["serve"] | {"serve"}
ALLOWED["cli"] = ALLOWED["commands"] | {"commands"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> set[str]:
    """Every dltricks module that ``path`` imports, anywhere in the file (relative imports resolved)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            # `from dltricks.tasks import segmentation` imports the submodule too.
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return {m for m in found if m == "dltricks" or m.startswith("dltricks.")}


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in SRC.rglob("*.py")}
    return {name: {m for m in _imports(path) if m in modules} for name, path in modules.items()}


def test_every_package_has_a_layer():
    packages = {_layer(_module_name(p)) for p in SRC.rglob("*.py")}
    assert packages <= set(ALLOWED), f"packages without a layer in ALLOWED: {sorted(packages - set(ALLOWED))}"


def test_imports_follow_the_layers():
    wrong = []
    for module, targets in sorted(_graph().items()):
        for target in sorted(targets):
            src, dst = _layer(module), _layer(target)
            if src != dst and dst not in ALLOWED[src]:
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports against the layering (see this file's docstring):\n" + "\n".join(wrong)


def test_no_import_cycles_between_modules():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            # A package's __init__ importing its own submodules (to register them) is not a cycle of logic.
            if nxt == node or nxt.startswith(node + "."):
                continue
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(cycles[:20])


@pytest.mark.parametrize("module", ["dltricks.train.trainer", "dltricks.tasks.base"])
def test_the_checker_sees_imports(module):
    # Guard against a checker that silently finds nothing.
    assert _graph()[module], f"no dltricks imports found in {module}"
