"""The packages' dependency direction, read from the source with ``ast`` (nothing is imported):
``nni_plugins -> strategies -> search_spaces -> nni_compat -> nni/torch``, with
``nni_plugins_nnictl`` (the tuners ``nnictl`` starts) on top; both ends light at module level
(``nni_compat`` patches each NNI module when it is imported, so that ``nni-plugins --help`` imports no
NNI). Plus the module graph of all our imports, module-level and inside functions, which must have
no cycle."""
from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Bottom to top: a package may import only packages to its left (and itself).
LAYERS = ('nni_compat', 'search_spaces', 'strategies', 'nni_plugins', 'nni_plugins_nnictl')
LIGHT_AT_MODULE_LEVEL = {'nni_plugins_nnictl': {'nni'} | set(sys.stdlib_module_names),
                         'nni_compat': set(sys.stdlib_module_names)}


@dataclass(frozen=True)
class Import:
    module: str          # the importing module
    line: int
    target: str          # absolute dotted name: our module when it is one, else what the statement names
    module_level: bool   # False inside a function (run when the function is)

    def __str__(self) -> str:
        path = ROOT / (self.module.replace('.', '/') + '.py')
        if not path.exists():
            path = path.with_suffix('') / '__init__.py'
        return f'{path.relative_to(ROOT)}:{self.line}: {self.module} imports {self.target}'


def _modules() -> dict[str, Path]:
    found = {}
    for package in LAYERS:
        for path in sorted((ROOT / package).rglob('*.py')):
            parts = path.relative_to(ROOT).with_suffix('').parts
            found['.'.join(parts[:-1] if parts[-1] == '__init__' else parts)] = path
    return found


MODULES = _modules()


def _ours(name: str) -> str:
    """``name``, or the longest prefix of it that is one of our modules (``import a.b.c`` of a
    module ``a.b`` whose attribute is ``c``)."""
    parts = name.split('.')
    for end in range(len(parts), 0, -1):
        if '.'.join(parts[:end]) in MODULES:
            return '.'.join(parts[:end])
    return name


def _in_function(tree: ast.AST) -> set[int]:
    """ids of the import nodes that sit in a function body."""
    inside = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            inside.update(id(child) for child in ast.walk(node) if isinstance(child, (ast.Import, ast.ImportFrom)))
    return inside


def _imports(module: str, path: Path) -> list[Import]:
    tree = ast.parse(path.read_text(), filename=str(path))
    inside = _in_function(tree)
    package = module if path.name == '__init__.py' else module.rpartition('.')[0]
    found = []
    for node in ast.walk(tree):
        level = id(node) not in inside
        if isinstance(node, ast.Import):
            found += [Import(module, node.lineno, _ours(alias.name), level) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:
                anchor = package.split('.')[:len(package.split('.')) - node.level + 1]
                base = '.'.join(anchor + ([node.module] if node.module else []))
            for alias in node.names:
                submodule = f'{base}.{alias.name}'
                found.append(Import(module, node.lineno, submodule if submodule in MODULES else _ours(base), level))
    return found


IMPORTS = [imp for module, path in MODULES.items() for imp in _imports(module, path)]


def _package(name: str) -> str:
    return name.split('.')[0]


def test_every_package_is_parsed_and_its_imports_resolved():
    assert {_package(m) for m in MODULES} == set(LAYERS)
    seen = {(imp.module, imp.target, imp.module_level) for imp in IMPORTS}
    assert ('nni_compat', 'nni_compat.registry', True) in seen              # from .registry import ...
    assert ('nni_compat.trial', 'nni_compat.channel', True) in seen         # from .channel import ...
    assert ('nni_plugins_nnictl', 'nni_plugins.tuners', False) in seen      # loaded inside a function


def test_no_package_imports_a_package_above_it():
    rank = {package: i for i, package in enumerate(LAYERS)}
    upward = [str(imp) for imp in IMPORTS
              if _package(imp.target) in rank and rank[_package(imp.target)] > rank[_package(imp.module)]]
    assert upward == [], 'imports against the layering ' + ' -> '.join(reversed(LAYERS)) + ':\n' + '\n'.join(upward)


def test_nnictl_tuners_and_compat_import_only_what_they_may_at_module_level():
    heavy = [str(imp) for imp in IMPORTS if imp.module_level and _package(imp.module) in LIGHT_AT_MODULE_LEVEL
             and _package(imp.target) not in LIGHT_AT_MODULE_LEVEL[_package(imp.module)] | {'__future__',
                                                                                         _package(imp.module)}]
    assert heavy == [], 'module-level imports beyond nni and the standard library:\n' + '\n'.join(heavy)


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module, or a module importing itself (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
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
            if len(component) > 1 or node in edges.get(node, ()):
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_cycle_finder_reports_the_modules_of_a_cycle():
    assert _cycles({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}) == [['a', 'b', 'c']]
    assert _cycles({'a': {'a'}, 'b': {'a'}}) == [['a']]
    assert _cycles({'a': {'b'}, 'b': set()}) == []


def test_no_import_cycle_between_our_modules():
    edges: dict[str, set[str]] = {}
    for imp in IMPORTS:
        if imp.target in MODULES:
            edges.setdefault(imp.module, set()).add(imp.target)
    report = []
    for cycle in _cycles(edges):
        members = set(cycle)
        report.append('cycle among ' + ', '.join(cycle) + ':\n' + '\n'.join(
            f'  {imp}' for imp in IMPORTS if imp.module in members and imp.target in members))
    assert report == [], 'import cycles:\n' + '\n'.join(report)


def test_importing_strategies_applies_the_fixes_without_the_plugins():
    """Importing ``strategies`` registers the fixes; an NNI module, imported then or later, is patched."""
    code = '''
import sys
import strategies
import nni_compat
from nni.nas.utils.serializer import TorchSerializer
assert nni_compat.patch_names(), 'no fix registered'
patched = TorchSerializer.__dict__['load']
with nni_compat.unpatched('torch_load_weights_only'):
    original = TorchSerializer.__dict__['load']
assert patched is not original and patched.__module__.startswith('nni_compat.'), patched.__module__
assert original.__module__ == 'nni.nas.utils.serializer', original.__module__
print(sorted(m for m in ('nni_plugins', 'nni_plugins_nnictl') if m in sys.modules))
'''
    out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == '[]'
