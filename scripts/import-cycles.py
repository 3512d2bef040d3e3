#!/usr/bin/env python3
"""Finds import cycles between the files of a Rust crate's source tree.

    scripts/import-cycles.py processor/src [sdk-instrumentation/src ...]

Every `.rs` file is a module. A `use crate::a::b::C`, `use super::C` or `use self::c::D` (and a path written
inline, `crate::a::b::f()`) is an edge to the deepest module file the path names, so `use crate::detect::Findings`
points at detect/mod.rs and `use crate::detect::grid::Track` at detect/grid.rs. `mod x;` declarations are not
edges, nor is anything inside a test module (`tests.rs` files and what follows `#[cfg(test)]`).

A module and its own descendants are one unit seen from outside: a facade re-exporting its children and the
children using their parent's items is how a Rust module is built, not a circle. Every other edge is read as one
between the two sibling modules under the pair's nearest common ancestor (`detect::growth::config -> detect::grid`
is `growth -> grid` inside `detect`; `config::schema -> detect::spread_drift` is `config -> detect`), and a
cycle among siblings is what this reports. Prints each cycle found and exits 1 if there is one."""
import re
import sys
from pathlib import Path

def module_of(root, path):
    rel = path.relative_to(root).with_suffix('')
    parts = list(rel.parts)
    if parts[-1] in ('mod', 'lib', 'main'):
        parts = parts[:-1]
    return tuple(parts)

def code(path):
    text = path.read_text()
    cut = re.search(r'^\s*#\[cfg\(test\)\]', text, re.M)
    text = text[:cut.start()] if cut else text
    # Comments, doc comments and strings name paths that are not imports.
    text = re.sub(r'//[^\n]*', '', text)
    return re.sub(r'"(?:\\.|[^"\\])*"', '""', text)

def paths(text, children):
    """Every path starting at crate/super/self or at a child module, with `use` groups expanded one level."""
    heads = '|'.join(['crate', 'super', 'self'] + [re.escape(c) for c in children])
    for m in re.finditer(r'\buse\s+((?:' + heads + r')(?:::\w+)*)(?:::\{([^;]*)\})?', text, re.S):
        base, group = m.group(1), m.group(2)
        if group is None:
            yield base
            continue
        for item in re.split(r',(?![^{]*\})', group):
            item = item.strip()
            head = re.match(r'(\w+(?:::\w+)*)', item)
            if head and head.group(1) != 'self':
                yield f'{base}::{head.group(1)}'
            elif head:
                yield base
    for m in re.finditer(r'(?<![\w:])((?:' + heads + r')(?:::\w+)+)', text):
        yield m.group(1)

def resolve(modules, here, path):
    parts = path.split('::')
    if parts[0] == 'crate':
        cur, rest = (), parts[1:]
    elif parts[0] not in ('super', 'self'):
        cur, rest = here, parts
    else:
        cur, rest = here, parts
        while rest and rest[0] in ('super', 'self'):
            if rest[0] == 'super':
                cur = cur[:-1]
            rest = rest[1:]
    best = cur if cur in modules else None
    for p in rest:
        cur = cur + (p,)
        if cur in modules:
            best = cur
        else:
            break
    return best

def cycles(root):
    files = {module_of(root, p): p for p in root.rglob('*.rs') if p.name != 'tests.rs'}
    edges = {}
    for m, p in files.items():
        # A file `a/b.rs` is module a::b; `super` from it is `a`. From `a/mod.rs` (module a) it is the crate.
        children = [c[-1] for c in files if len(c) == len(m) + 1 and c[:len(m)] == m]
        for path in paths(code(p), children):
            target = resolve(files, m, path)
            if target is None or target[:len(m)] == m or m[:len(target)] == target:
                continue  # itself, an ancestor or a descendant
            k = 0
            while m[k] == target[k]:
                k += 1
            edges.setdefault(m[:k + 1], set()).add(target[:k + 1])
    found, state, stack = [], {}, []
    def visit(m):
        state[m] = 1
        stack.append(m)
        for n in sorted(edges.get(m, ())):
            if state.get(n) == 1:
                found.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = 2
    for m in sorted(edges):
        if m not in state:
            visit(m)
    return found

def main():
    bad = 0
    for arg in sys.argv[1:] or ['src']:
        root = Path(arg)
        found = cycles(root)
        for c in found:
            print(f'{root}: ' + ' -> '.join('::'.join(m) or 'crate' for m in c))
        if not found:
            print(f'{root}: no import cycle')
        bad += len(found)
    sys.exit(1 if bad else 0)

main()
