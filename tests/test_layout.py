"""The package layout: the root holds subpackages (and the few modules whose docstrings say why they stand alone),
imports between subpackages point one way, and no module imports one that imports it back, at the top or inside
a function. Read from the source with ``ast``, so nothing is imported."""
import ast
import os

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'dvmsr_mma')

# What each subpackage may import (besides itself); the root modules (__init__, __main__ and the two public-path
# modules) may import anything, and no subpackage imports the public-path modules.
ALLOWED = {
    'utils': set(),
    'ops': {'utils'},
    'archs': {'ops', 'utils'},
    'data': {'utils'},
    'tools': {'archs', 'ops', 'utils'},
    'training': {'archs', 'ops', 'data', 'tools', 'utils'},
    'models': {'archs', 'ops', 'training', 'tools', 'utils'},
    'demo': {'utils'},
    'cli': {'archs', 'ops', 'data', 'models', 'training', 'tools', 'demo', 'utils'},
}
ROOT_MODULES = {'__init__', '__main__', 'infer', 'spandrel'}


def module_name(path):
    rel = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3].replace(os.sep, '.')
    return rel[:-len('.__init__')] if rel.endswith('.__init__') else rel


def modules():
    found = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith('.py'):
                path = os.path.join(folder, name)
                found[module_name(path)] = path
    return found


def imports(name, path, known):
    """The package modules ``name`` imports: ``from a.b import c`` counts as a.b.c when that is a module. The root
    package itself (``import dvmsr_mma`` to fill the registries, ``from dvmsr_mma import __version__``) is left
    out: importing any submodule has imported it already, so such a line depends on nothing new."""
    is_package = path.endswith('__init__.py')
    base = name.split('.') if is_package else name.split('.')[:-1]
    targets = set()
    for node in ast.walk(ast.parse(open(path, encoding='utf-8').read())):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ''
            if node.level:
                module = '.'.join(base[:len(base) - node.level + 1] + ([module] if module else []))
            for alias in node.names:
                full = f'{module}.{alias.name}'
                targets.add(full if full in known else module)
    return {t for t in targets if t in known and t not in (name, 'dvmsr_mma')}


def graph():
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def subpackage(name):
    parts = name.split('.')
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] not in ROOT_MODULES) else None


def test_root_holds_subpackages_and_the_public_path_modules():
    entries = sorted(e for e in os.listdir(PACKAGE) if not e.startswith(('.', '__pycache__')))
    files = {e[:-3] for e in entries if e.endswith('.py')}
    assert files == ROOT_MODULES, files
    assert {e for e in entries if not e.endswith('.py')} == set(ALLOWED)
    for name in ROOT_MODULES - {'__init__', '__main__'}:
        doc = ast.get_docstring(ast.parse(open(os.path.join(PACKAGE, f'{name}.py')).read()))
        assert 'kept' in doc and f'dvmsr_mma.tools.{name}' in doc, name  # says why it stands alone


@pytest.mark.parametrize('package', sorted(ALLOWED))
def test_every_subpackage_says_what_it_holds(package):
    doc = ast.get_docstring(ast.parse(open(os.path.join(PACKAGE, package, '__init__.py')).read()))
    assert doc and len(doc) > 40, package


def test_subpackages_import_one_way():
    wrong = []
    for name, targets in graph().items():
        source = subpackage(name)
        for target in targets:
            into = subpackage(target)
            if into is None and source is not None:
                wrong.append(f'{name} imports the public-path module {target}')
            elif source is not None and into not in (source, *ALLOWED[source]):
                wrong.append(f'{name} imports {target}')
    assert not wrong, '\n'.join(wrong)


def test_no_module_imports_one_that_imports_it_back():
    edges = graph()

    def reaches(start, goal):
        seen, todo = set(), [start]
        while todo:
            for target in edges[todo.pop()]:
                if target == goal:
                    return True
                if target not in seen:
                    seen.add(target)
                    todo.append(target)
        return False

    circles = sorted(name for name in edges if reaches(name, name))
    assert not circles, {name: sorted(edges[name]) for name in circles}


def test_the_graph_sees_imports():
    """The check above would pass on an empty graph: a few edges every version of the package has."""
    edges = graph()
    assert 'dvmsr_mma.ops.dispatch' in edges['dvmsr_mma.archs.mamba_block'] or \
        'dvmsr_mma.ops' in edges['dvmsr_mma.archs.mamba_block']
    assert 'dvmsr_mma.ops.scan_inputs' in edges['dvmsr_mma.ops.scan_lanes']
    assert 'dvmsr_mma.tools.infer' in edges['dvmsr_mma.infer']
