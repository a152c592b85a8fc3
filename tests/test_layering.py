"""Imports point one way, down a fixed stack of layers (docs/layout.md), and never in a circle.

    1  `search` and `rewards`: search over noise and reward models; no `tscale_train`, no diffusers
    2  the core of `tscale_train`: settings and their parsing, loading, generation, the model families,
       the LoRA, the DPO loss, pairs and their store, prompts, I/O helpers, the offline kits
    3  the trainer and its features: the loop, the search driver (`ses`), evaluation, guards, EMA,
       checkpointing, the run directory, the optimizer
    4  entry points: the CLI, Hub export, memory planning, the shapes model's card

A module may import from its own layer or below, never above. Every import counts, also one inside a
function or under `TYPE_CHECKING`: a function-level import is still a dependency, and a type-only one
still couples the two modules' designs. So does a module's import of its own package (`from . import x`
in `pkg/mod.py` reads `pkg/__init__.py`): a package whose `__init__` calls into its modules while they read
it back is a circle, held together only by import order. Pure `ast`: nothing here imports the packages, so
the test runs in about a second and a package that fails to import cannot hide a bad edge.

A new module fails `test_every_module_has_a_layer` until it is added to `LAYERS`.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("tscale_train", "search", "rewards")

# Module -> layer. "pkg.*" is the package and everything under it; a name without ".*" is that module only.
# The most specific entry wins (an exact name, else the longest "pkg.*").
LAYERS = {
    # 1: the independent packages
    "search.*": 1,
    "rewards.*": 1,
    # 2: the core
    "tscale_train": 2,
    "tscale_train.config": 2,
    "tscale_train.parsing": 2,
    "tscale_train.io_utils": 2,
    "tscale_train.safe_load": 2,
    "tscale_train.distributed": 2,
    "tscale_train.real_configs": 2,
    "tscale_train.loading": 2,
    "tscale_train.generation": 2,
    "tscale_train.generators.*": 2,
    "tscale_train.lora": 2,
    "tscale_train.quantization": 2,  # a float8 frozen base (diffusers' layerwise casting)
    "tscale_train.dpo": 2,
    "tscale_train.pairs.*": 2,
    "tscale_train.prompts": 2,
    "tscale_train.progress": 2,  # progress bars and console lines, main process only
    "tscale_train.prompt_cache": 2,
    "tscale_train.tiny.*": 2,
    "tscale_train.families.*": 2,  # the model families' registry, read by loading, generation, LoRA, plan, export
    "tscale_train.shapes": 2,  # the shipped pipeline's location (`--model shapes` loads it)
    "tscale_train.shapes.model": 2,  # the shapes model's components, built like the tiny kits
    "tscale_train.shapes.training": 2,
    # 3: the trainer and its features
    "tscale_train.trainer": 3,
    "tscale_train.optimization": 3,  # the trainer's optimizer and schedule, sized to its rounds
    "tscale_train.guards": 3,
    "tscale_train.ema": 3,
    "tscale_train.evaluation": 3,
    "tscale_train.checkpointing": 3,
    "tscale_train.run_dir": 3,
    "tscale_train.callbacks": 3,
    "tscale_train.ses.*": 3,  # the search driver: search over a pipeline's noise, scored by a reward
    "tscale_train.compare": 3,  # `tscale ses --compare`: several searches side by side
    "tscale_train.shapes.evaluation": 3,  # a run's LoRA judged by ground truth on the shapes model
    # 4: entry points
    "tscale_train.cli": 4,
    "tscale_train.export.*": 4,
    "tscale_train.plan.*": 4,
    "tscale_train.shapes.card": 4,  # writes the shipped pipeline's card from a fresh evaluation
}

# Libraries each independent package must not import (top-level names). `rewards` loads its reward models
# with transformers and open_clip, so for it only the pipeline side is off limits.
FORBIDDEN = {
    "search": ("tscale_train", "diffusers", "transformers", "peft", "accelerate"),
    "rewards": ("tscale_train", "diffusers"),
}


@dataclass(frozen=True)
class Edge:
    source: str
    target: str  # a module of PACKAGES, or the top-level name of an outside library
    path: Path
    line: int

    def where(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"


def find_modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of PACKAGES (a package is its `__init__.py`)."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def _package_of(name: str, path: Path) -> str:
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def _owner(name: str, modules: dict[str, Path]) -> str | None:
    """The module of PACKAGES that `name` (a module, or a module's attribute) lives in."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _targets(node: ast.Import | ast.ImportFrom, name: str, path: Path, modules: dict[str, Path]) -> list[str]:
    if isinstance(node, ast.Import):
        wanted = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = _package_of(name, path).split(".")
            anchor = package[: len(package) - (node.level - 1)]
            base = ".".join(anchor + ([base] if base else []))
        # `from pkg import sub` imports the submodule `pkg.sub`; `from mod import name`, the module `mod`.
        wanted = [
            f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names
        ]
    targets = []
    for item in wanted:
        owner = _owner(item, modules)
        targets.append(owner if owner is not None else item.split(".")[0])
    return targets


def import_edges() -> list[Edge]:
    """Every import statement of every module, anywhere in its file, as edges (first line of each kept)."""
    modules = find_modules()
    edges: dict[tuple[str, str], Edge] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "__future__":
                continue
            if isinstance(node, ast.Import | ast.ImportFrom):
                for target in _targets(node, name, path, modules):
                    edge = Edge(name, target, path, node.lineno)
                    key = (name, target)
                    if target != name and (key not in edges or edge.line < edges[key].line):
                        edges[key] = edge
    return sorted(edges.values(), key=lambda edge: (edge.source, edge.target))


def internal_graph() -> dict[str, dict[str, Edge]]:
    modules = find_modules()
    graph: dict[str, dict[str, Edge]] = defaultdict(dict)
    for edge in import_edges():
        if edge.target in modules:
            graph[edge.source][edge.target] = edge
    return graph


def strongly_connected(graph: dict[str, dict[str, Edge]]) -> list[list[str]]:
    """Tarjan's components of more than one module (an import circle), iteratively (no recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, {})))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return sorted(components)


def shortest_cycle(graph: dict[str, dict[str, Edge]], start: str, within: set[str]) -> list[str]:
    """The shortest import chain from `start` back to itself inside one component: [start, ..., start]."""
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph.get(node, {})):
                if child not in within:
                    continue
                if child == start:
                    chain = [node]
                    while chain[-1] != start:
                        chain.append(previous[chain[-1]])
                    return [start, *reversed(chain[:-1]), start] if node != start else [start, start]
                if child not in previous:
                    previous[child] = node
                    following.append(child)
        frontier = following
    raise AssertionError(f"{start} is in no cycle of {sorted(within)}")


def layer_of(name: str) -> int | None:
    if name in LAYERS:
        return LAYERS[name]
    packages = [key[:-2] for key in LAYERS if key.endswith(".*")]
    covering = [package for package in packages if name == package or name.startswith(package + ".")]
    return LAYERS[max(covering, key=len) + ".*"] if covering else None


def test_the_graph_sees_every_kind_of_import():
    """The parser's own check: relative, function-level and TYPE_CHECKING imports are all edges."""
    modules = find_modules()
    assert {"tscale_train.config", "tscale_train.pairs.record", "search", "rewards.registry"} <= set(modules)
    edges = {(edge.source, edge.target) for edge in import_edges()}
    assert ("tscale_train.pairs", "tscale_train.pairs.record") in edges  # `from .record import ...`
    assert ("tscale_train.pairs.selection", "search") in edges  # absolute, to the package
    assert ("tscale_train.parsing", "transformers") in edges  # inside a function
    assert ("rewards.registry", "rewards.names") in edges


def test_no_import_cycles():
    graph = internal_graph()
    cycles = []
    for component in strongly_connected(graph):
        chain = shortest_cycle(graph, component[0], set(component))
        lines = ", ".join(graph[a][b].where() for a, b in zip(chain, chain[1:], strict=False))
        cycles.append(f"{' -> '.join(chain)}  ({lines}; the circle holds {', '.join(component)})")
    assert not cycles, "import cycles (break each by moving what both need to a lower module):\n" + "\n".join(
        cycles
    )


def test_search_and_rewards_import_no_pipeline_code():
    found = []
    for edge in import_edges():
        package = edge.source.split(".")[0]
        if edge.target.split(".")[0] in FORBIDDEN.get(package, ()):
            found.append(f"{edge.source} -> {edge.target} ({edge.where()})")
    assert not found, (
        "`search` must not import tscale_train or the model libraries, `rewards` neither tscale_train nor diffusers "
        "(docs/layout.md: dependencies point one way):\n" + "\n".join(found)
    )


def test_every_module_has_a_layer():
    missing = sorted(name for name in find_modules() if layer_of(name) is None)
    assert not missing, (
        f"modules without a layer: {', '.join(missing)}; add each (or its package as 'pkg.*') to LAYERS in "
        "tests/test_layering.py, at the layer its job belongs to (see the module docstring)."
    )


def test_the_layer_table_names_only_existing_modules():
    modules = find_modules()
    stale = sorted(
        key
        for key in LAYERS
        if not any(
            name == key.removesuffix(".*") or (key.endswith(".*") and name.startswith(key[:-1]))
            for name in modules
        )
    )
    assert not stale, (
        f"LAYERS names modules that do not exist: {', '.join(stale)}; remove them or fix their names."
    )


def test_imports_point_down_the_layers():
    upward = []
    graph = internal_graph()
    for source, targets in sorted(graph.items()):
        for target, edge in sorted(targets.items()):
            source_layer, target_layer = layer_of(source), layer_of(target)
            if source_layer is not None and target_layer is not None and target_layer > source_layer:
                upward.append(
                    f"{source} (layer {source_layer}) -> {target} (layer {target_layer}) at {edge.where()}"
                )
    assert not upward, (
        "imports from a lower layer to a higher one (move what is shared down, or pass it in):\n"
        + "\n".join(upward)
    )
