"""The package's import structure: what ``import convnext_dense`` loads, and no circles.

The import graph is read from the source (``ast``), every ``import`` counted wherever it
stands (module level or inside a function: a lazy import hides a circle from a reader of the
module's head, not from the design); imports under ``if TYPE_CHECKING:`` are annotations
only and left out.
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

PACKAGE = 'convnext_dense'
PACKAGE_DIR = REPO / PACKAGE
#: Subpackages in their layer order, lowest first: a subpackage imports only from the
#: ones before it (and from the top-level modules arch, registry, utils).
LAYERS = ('checkpoint', 'models', 'engine', 'apis', 'deploy', 'demo', 'benchmark')
#: What ``import convnext_dense`` must not load (the application layer and its heavy deps).
NOT_ON_IMPORT = ('convnext_dense.apis', 'convnext_dense.deploy', 'convnext_dense.demo',
                 'convnext_dense.benchmark', 'onnx', 'onnxruntime')


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix('').parts)
    if parts[-1] == '__init__':
        parts.pop()
    return '.'.join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == 'TYPE_CHECKING') or (
        isinstance(test, ast.Attribute) and test.attr == 'TYPE_CHECKING')


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    found = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (``from .x import y`` counts ``.x.y`` if
    that is a module, else ``.x``)."""
    modules = {module_name(p): p for p in PACKAGE_DIR.rglob('*.py')}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == '__init__.py'
        edges = set()
        for node in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    base = name.split('.')
                    base = base[:len(base) - node.level + (1 if is_package else 0)]
                    prefix = '.'.join(base + ([node.module] if node.module else []))
                else:
                    prefix = node.module or ''
                targets = [f'{prefix}.{alias.name}' if f'{prefix}.{alias.name}' in modules
                           else prefix for alias in node.names]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition('.')[0]
                if target.startswith(PACKAGE) and target != name:
                    edges.add(target)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a list of nodes (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def layer_of(module: str) -> str:
    parts = module.split('.')
    return parts[1] if len(parts) > 1 else ''


def test_no_import_circles_between_modules():
    cycle = find_cycle({name: edges - {PACKAGE} for name, edges in import_graph().items()
                        if name != PACKAGE})
    assert cycle is None, ' -> '.join(cycle)


def test_subpackages_import_only_downwards():
    wrong = []
    for name, edges in import_graph().items():
        if name == PACKAGE or layer_of(name) not in LAYERS:
            continue
        level = LAYERS.index(layer_of(name))
        for target in edges:
            if target == PACKAGE:
                wrong.append(f'{name} -> {target} (the package root registers; import the module)')
            elif layer_of(target) in LAYERS and LAYERS.index(layer_of(target)) > level:
                wrong.append(f'{name} -> {target}')
    assert not wrong, '\n'.join(sorted(wrong))


def test_the_graph_reader_sees_lazy_and_relative_imports():
    """The reader itself: a function-level relative import is an edge, TYPE_CHECKING is not."""
    graph = {'a': {'b'}, 'b': {'c'}, 'c': {'a'}}
    assert find_cycle(graph) == ['a', 'b', 'c', 'a']
    assert find_cycle({'a': {'b'}, 'b': set()}) is None
    source = ('from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .x import y\n'
              'def f():\n    from ..z import w\n')
    nodes = _imports(ast.parse(source))
    assert [(n.level, n.module) for n in nodes if isinstance(n, ast.ImportFrom)] == [
        (0, 'typing'), (2, 'z')]


def test_import_registers_without_loading_the_application_layer():
    code = ('import json, sys, time; t = time.perf_counter(); import convnext_dense; '
            'print(json.dumps([time.perf_counter() - t, sorted(sys.modules)]))')
    result = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True,
                            text=True, check=True)
    seconds, loaded = json.loads(result.stdout.splitlines()[-1])
    unwanted = sorted(m for m in loaded
                      if any(m == n or m.startswith(n + '.') for n in NOT_ON_IMPORT))
    assert not unwanted, f'import convnext_dense loaded {unwanted} ({seconds:.2f} s)'
    assert {'convnext_dense.models.backbone', 'convnext_dense.engine.layer_decay',
            'convnext_dense.engine.hooks'} <= set(loaded)


def test_deploy_import_registers_the_runtime_models():
    code = ('import convnext_dense.deploy, mmdet.registry, mmseg.registry; '
            "print(mmdet.registry.MODELS.get('ONNXRuntimeDetector').__name__, "
            "mmseg.registry.MODELS.get('ONNXRuntimeSegmentor').__name__)")
    result = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True,
                            text=True, check=True)
    assert result.stdout.split() == ['ONNXRuntimeDetector', 'ONNXRuntimeSegmentor']
