"""The shape of the package: instag's modules import each other without a cycle (not even through an import inside a
function), and no module is too long to read in one sitting."""
import ast, sys
from pathlib import Path

import pytest

import instag

PKG = Path(instag.__file__).resolve().parent
MAX_LINES = 450
# Modules over MAX_LINES that are known and scheduled to be split ({module: why it is still long}); none today. The test
# fails when one of them gets short enough, so an exemption cannot outlive the problem.
OVER_LIMIT: dict[str, str] = {}

def module_name(path: Path) -> str:
    "`instag/prepare/face.py` -> 'instag.prepare.face'; `instag/prepare/__init__.py` -> 'instag.prepare'."
    parts = list(path.relative_to(PKG.parent).with_suffix('').parts)
    if parts[-1] == '__init__': parts.pop()
    return '.'.join(parts)

def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PKG.rglob('*.py')) if p.name != '_modidx.py'}

def _resolve(node: ast.ImportFrom, name: str, is_package: bool) -> str:
    "The absolute module an ImportFrom names (relative levels resolved against module `name`)."
    if node.level == 0: return node.module or ''
    base = name.split('.') if is_package else name.split('.')[:-1]
    base = base[:len(base) - (node.level - 1)]
    return '.'.join(base + ([node.module] if node.module else []))

def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    "instag modules that module `name` imports anywhere in its file (top level, functions, classes, try blocks)."
    out = set()
    def add(target: str):
        # `from instag.prepare import face` names the module instag.prepare.face; `import instag.prepare.face` loads
        # instag.prepare (its __init__) and instag.prepare.face; take the longest known module a name resolves to
        while target and target not in known: target = target.rpartition('.')[0]
        if target and target != name: out.add(target)
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == 'instag' or a.name.startswith('instag.'): add(a.name)
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(node, name, path.name == '__init__.py')
            if target != 'instag' and not target.startswith('instag.'): continue
            for a in node.names:
                full = f'{target}.{a.name}'
                add(full if full in known else target)
    return out

def import_graph() -> dict[str, set[str]]:
    mods = modules(); known = set(mods)
    return {name: imports_of(name, path, known) for name, path in mods.items()}

def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    "One import cycle as a list of modules [a, b, ..., a], or None when the graph has none."
    state, stack = {}, []  # state: 1 on the current path, 2 finished
    def visit(n):
        state[n] = 1; stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1: return stack[stack.index(m):] + [m]
            if m not in state and (found := visit(m)): return found
        state[n] = 2; stack.pop()
        return None
    for n in sorted(graph):
        if n not in state and (found := visit(n)): return found
    return None

def test_find_cycle_on_small_graphs():
    assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': set()}) is None
    assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']
    assert find_cycle({'a': {'b', 'c'}, 'b': set(), 'c': {'d'}, 'd': {'c'}}) == ['c', 'd', 'c']
    assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': set(), 'd': {'b'}}) is None

def test_imports_are_read_everywhere_in_a_file(tmp_path, monkeypatch):
    pkg = tmp_path / 'instag'; (pkg / 'prepare').mkdir(parents=True)
    (pkg / '__init__.py').write_text(''); (pkg / 'prepare' / '__init__.py').write_text('')
    (pkg / 'render.py').write_text('def f():\n    try: from instag._render_cpu import x\n    except ImportError: pass\n')
    (pkg / '_render_cpu.py').write_text('from . import render\n')
    (pkg / 'prepare' / 'face.py').write_text('from ..core import UserError\nfrom .masks import m\nimport instag.prepare\n')
    (pkg / 'prepare' / 'masks.py').write_text('')
    (pkg / 'core.py').write_text('class C:\n    def g(self):\n        from instag.prepare import face\n')
    monkeypatch.setattr(sys.modules[__name__], "PKG", pkg)
    graph = import_graph()
    assert graph['instag.render'] == {'instag._render_cpu'} and graph['instag._render_cpu'] == {'instag.render'}
    assert graph['instag.prepare.face'] == {'instag.core', 'instag.prepare.masks', 'instag.prepare'}
    assert graph['instag.core'] == {'instag.prepare.face'}
    assert find_cycle(graph) in (['instag._render_cpu', 'instag.render', 'instag._render_cpu'],
                                 ['instag.core', 'instag.prepare.face', 'instag.core'])

def test_no_import_cycle():
    graph = import_graph()
    assert 'instag.prepare.pipeline' in graph and 'instag.prepare' in graph
    cycle = find_cycle(graph)
    assert cycle is None, 'import cycle: ' + ' -> '.join(cycle) + ' (move the shared piece to the lower module, or pass it in)'

def test_no_module_over_the_line_limit():
    lengths = {name: len(path.read_text().splitlines()) for name, path in modules().items()}
    long = {n: k for n, k in lengths.items() if k > MAX_LINES and n not in OVER_LIMIT}
    assert not long, f'modules over {MAX_LINES} lines (split them by topic): {long}'
    stale = [n for n in OVER_LIMIT if lengths.get(n, 0) <= MAX_LINES]
    assert not stale, f'{stale} are no longer over {MAX_LINES} lines: remove them from OVER_LIMIT'

@pytest.mark.parametrize('old', ['prepare', 'synth', 'viewer', 'view'])
def test_a_module_never_sits_beside_a_package_of_its_name(old):
    assert not ((PKG / f'{old}.py').exists() and (PKG / old).is_dir())
