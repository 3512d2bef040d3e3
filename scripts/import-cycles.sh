#!/usr/bin/env bash
# Import cycles between the modules of a Rust crate.
#
#   scripts/import-cycles.sh [--edges] [--tests] <src dir | crate root .rs file>...
#
# Follows `mod` declarations from each crate root (lib.rs, main.rs, bin/*.rs under a src dir), then reads every
# module's `use` declarations and the `crate::` / `super::` / `self::` / child-module paths written in its code.
# Each path is resolved to the module that defines the item, following imports and re-exports (`pub use`), so
# `crate::Scope` counts as an edge to the module that defines `Scope`, not to the crate root. `mod x;` itself is
# not an edge. `#[cfg(test)]` items are left out unless --tests is given.
#
# Prints the module graph's cycles (each strongly connected component of more than one module, the shortest cycle
# through each of its modules, and where each edge comes from) and exits 1 if there is any; --edges also prints every edge.
# Limits: no macro expansion; `#[path]` attributes and glob re-exports are not followed.
set -euo pipefail
exec python3 - "$@" <<'PY'
import os
import re
import sys
from collections import defaultdict, deque

args = [a for a in sys.argv[1:] if not a.startswith("--")]
flags = {a for a in sys.argv[1:] if a.startswith("--")}
unknown = flags - {"--edges", "--tests"}
if unknown or not args:
    sys.exit("usage: import-cycles.sh [--edges] [--tests] <src dir | crate root .rs>...")
SHOW_EDGES = "--edges" in flags
WITH_TESTS = "--tests" in flags

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
CHAR_LIT = re.compile(r"'(?:\\u\{[0-9a-fA-F]+\}|\\x[0-9a-fA-F]{2}|\\.|[^\\'\n])'")


def strip(src):
    """Comments and string/char literals blanked out (newlines kept, for line numbers)."""
    out, i, n = [], 0, len(src)
    while i < n:
        c = src[i]
        if src.startswith("//", i):
            j = src.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif src.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if src.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif src.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append(re.sub(r"[^\n]", " ", src[i:j]))
            i = j
        elif c == "r" and re.match(r'r#*"', src[i:]) and (i == 0 or not re.match(r"\w", src[i - 1])):
            m = re.match(r'r(#*)"', src[i:])
            end = src.find('"' + m.group(1), i + m.end())
            j = n if end < 0 else end + 1 + len(m.group(1))
            out.append('""' + re.sub(r"[^\n]", " ", src[i + 2 : j]))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and src[j] != '"':
                j += 2 if src[j] == "\\" else 1
            out.append('""' + re.sub(r"[^\n]", " ", src[i + 2 : j + 1]))
            i = j + 1
        elif c == "'":
            m = CHAR_LIT.match(src, i)
            if m:
                out.append("' '" + " " * (m.end() - i - 3))
                i = m.end()
            else:  # a lifetime
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def split_top(s, sep=","):
    parts, depth, cur = [], 0, []
    for ch in s:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if ch == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


def expand_use(tree, prefix=()):
    """`a::{b, c::{d as e}, self}` -> [(segments, bound name or None for a glob)]."""
    tree = tree.strip()
    if tree.startswith("::"):
        tree = tree[2:]
    if tree.endswith("}") and "{" in tree:
        head, _, body = tree.partition("{")
        head = [s for s in head.strip().rstrip(":").split("::") if s]
        out = []
        for part in split_top(body[:-1]):
            out.extend(expand_use(part, prefix + tuple(head)))
        return out
    alias = None
    m = re.match(r"(.*?)\s+as\s+(" + IDENT + r")$", tree)
    if m:
        tree, alias = m.group(1), m.group(2)
    segs = prefix + tuple(s.strip() for s in tree.split("::") if s.strip())
    if segs and segs[-1] == "self":
        segs = segs[:-1]
    if not segs:
        return []
    if segs[-1] == "*":
        return [(segs[:-1], None)]
    return [(segs, alias or segs[-1])]


TOKEN = re.compile(
    r"(?P<attr>#!?\[)"
    r"|(?P<mod>\bmod\s+(?P<modname>" + IDENT + r")\s*(?P<modend>[;{]))"
    r"|(?P<use>\buse\s)"
    r"|(?P<item>\b(?:(?:const|async|unsafe)\s+)*(?:fn|struct|enum|union|trait|type|static|const|macro_rules\s*!)"
    r"\s+(?:mut\s+)?(?P<itemname>" + IDENT + r"))"
    r"|(?P<vis>\bpub\s*\(\s*in\s+[^)]*\))"
    r"|(?P<path>(?<![\w:$])(?:" + IDENT + r")(?:\s*::\s*" + IDENT + r")+)"
    r"|(?P<open>\{)|(?P<close>\})|(?P<semi>;)"
    r"|(?P<ident>\b" + IDENT + r")"
)


class Crate:
    def __init__(self, root):
        self.root = root
        self.modules = {}  # module path (tuple) -> file
        self.children = defaultdict(set)
        self.imports = defaultdict(dict)  # module -> name -> (segments, module it was written in)
        self.globs = defaultdict(list)
        self.refs = []  # (module, segments, file, line, name a `pub use` binds or None)
        self.idents = defaultdict(set)  # module -> identifiers written in its code outside `use`
        self.defs = defaultdict(set)  # module -> names of the items it defines
        self.load(("crate",), root, os.path.dirname(root))

    def load(self, mod, path, child_dir):
        self.modules[mod] = path
        with open(path, encoding="utf-8") as f:
            text = strip(f.read())
        line_of = lambda pos: text.count("\n", 0, pos) + 1
        stack = []  # one entry per open brace: ("mod", name, child_dir) | ("skip",) | ("block",)
        cur, cur_dir = mod, child_dir
        test_next = False  # the next item carries #[cfg(test)]
        skipping = 0  # depth of braces inside a skipped item
        skip_item = False
        pos = 0
        while True:
            m = TOKEN.search(text, pos)
            if not m:
                break
            pos = m.end()
            kind = {"modname": "mod", "modend": "mod", "itemname": "item"}.get(m.lastgroup, m.lastgroup)
            if kind == "attr":
                # the attribute's balanced brackets
                depth, j = 1, m.end()
                while j < len(text) and depth:
                    depth += {"[": 1, "]": -1}.get(text[j], 0)
                    j += 1
                body = text[m.end() : j - 1]
                pos = j
                if (
                    not WITH_TESTS
                    and re.match(r"\s*cfg\s*\(", body)
                    and re.search(r"\btest\b", body)
                    and "not" not in body
                ):
                    test_next = True
                continue
            if kind == "open":
                if skipping or (test_next or skip_item):
                    skipping += 1
                    test_next = skip_item = False
                    stack.append(("skip",))
                else:
                    stack.append(("block",))
                continue
            if kind == "close":
                if not stack:
                    continue
                top = stack.pop()
                if top[0] == "skip":
                    skipping -= 1
                elif top[0] == "mod":
                    cur, cur_dir = top[1], top[2]
                continue
            if kind == "semi":
                test_next = skip_item = False
                continue
            if skipping:
                continue
            if test_next and kind != "mod":
                # a #[cfg(test)] item other than a module: skip up to its `;` or over its braces
                test_next, skip_item = False, True
            if skip_item:
                if kind == "use":
                    end = text.find(";", pos)
                    pos = len(text) if end < 0 else end
                continue
            if kind == "mod":
                name = m.group("modname")
                if test_next:
                    test_next = False
                    if m.group("modend") == "{":
                        skipping += 1
                        stack.append(("skip",))
                    continue
                child = cur + (name,)
                self.children[cur].add(name)
                if m.group("modend") == "{":
                    self.modules[child] = path
                    stack.append(("mod", cur, cur_dir))
                    cur, cur_dir = child, os.path.join(cur_dir, name)
                else:
                    for cand in (os.path.join(cur_dir, name + ".rs"), os.path.join(cur_dir, name, "mod.rs")):
                        if os.path.isfile(cand):
                            self.load(child, cand, os.path.join(cur_dir, name))
                            break
                    else:
                        print(f"warning: {path}:{line_of(m.start())}: no file for `mod {name};`", file=sys.stderr)
                continue
            if kind == "use":
                end = text.find(";", pos)
                end = len(text) if end < 0 else end
                tree = re.sub(r"\s+", " ", text[pos:end]).strip()
                line = line_of(m.start())
                public = re.search(r"\bpub\s*(\([^)]*\))?\s*$", text[max(0, m.start() - 40) : m.start()])
                pos = end
                for segs, name in expand_use(tree):
                    if name is None:
                        self.globs[cur].append((segs, cur))
                    else:
                        self.imports[cur][name] = (segs, cur)
                    # A re-export is naming, not a dependency: it counts only where the module's own code uses it.
                    self.refs.append((cur, segs, path, line, (name or "*") if public else None))
                continue
            if kind == "path":
                segs = tuple(s.strip() for s in m.group("path").split("::"))
                self.refs.append((cur, segs, path, line_of(m.start()), None))
                continue
            if kind == "item":
                self.defs[cur].add(m.group("itemname"))
                continue
            if kind == "ident":
                self.idents[cur].add(m.group("ident"))
                continue
            # kind == "vis": `pub(in path)` names no dependency

    def resolve(self, segs, at, seen=None):
        """The module that defines the item `segs` names when written in module `at`; None if outside the crate."""
        seen = set() if seen is None else seen
        key = (segs, at)
        if key in seen or not segs:
            return None
        seen.add(key)
        first = segs[0]
        if first == "crate":
            mod, rest = ("crate",), segs[1:]
        elif first == "super":
            mod, rest = at, segs
            while rest and rest[0] == "super":
                mod, rest = mod[:-1] or ("crate",), rest[1:]
        elif first == "self":
            mod, rest = at, segs[1:]
        elif first in self.children[at]:
            mod, rest = at + (first,), segs[1:]
        elif first in self.imports[at]:
            target, where = self.imports[at][first]
            if target == segs[:1]:
                return None  # `use foo;` of an extern crate
            return self.resolve(target + segs[1:], where, seen)
        else:
            return None  # std, an extern crate, a local variable or type parameter
        while rest:
            nxt = mod + (rest[0],)
            if nxt in self.modules:
                mod, rest = nxt, rest[1:]
                continue
            if rest[0] in self.imports[mod]:
                target, where = self.imports[mod][rest[0]]
                found = self.resolve(target + rest[1:], where, seen)
                return found if found is not None else mod
            if rest[0] not in self.defs[mod]:
                for target in self.glob_targets(mod, seen):
                    if rest[0] in self.defs[target] or rest[0] in self.imports[target]:
                        return self.resolve(target + rest, target, seen)
            break
        return mod

    def glob_targets(self, mod, seen=None):
        out = []
        for segs, where in self.globs[mod]:
            target = self.resolve(segs, where, seen)
            if target is not None and target != mod:
                out.append(target)
        return out

    def edges(self):
        out = {}
        for mod, segs, path, line, reexport in self.refs:
            if reexport is not None and reexport not in self.idents[mod]:
                continue
            target = self.resolve(segs, mod)
            if target is None or target == mod:
                continue
            out.setdefault((mod, target), f"{path}:{line}")
        # Names a module's code takes from a glob import (`use x::*`, `pub use x::*`).
        for mod in list(self.modules):
            for target in self.glob_targets(mod):
                for ident in sorted(self.idents[mod]):
                    if ident in self.defs[target] or ident in self.imports[target]:
                        found = self.resolve(target + (ident,), target)
                        if found is not None and found != mod:
                            out.setdefault((mod, found), f"{self.modules[mod]}: `{ident}` through a glob import")
        return out


def sccs(nodes, adj):
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]

    def visit(v):
        work = [(v, iter(sorted(adj[v])))]
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        while work:
            node, it = work[-1]
            pushed = False
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(adj[w]))))
                    pushed = True
                    break
                if w in on:
                    low[node] = min(low[node], index[w])
            if pushed:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == node:
                        break
                out.append(sorted(comp))

    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return out


def shortest_cycle(start, comp, adj):
    comp = set(comp)
    prev, queue = {start: None}, deque([start])
    while queue:
        v = queue.popleft()
        for w in sorted(adj[v]):
            if w == start:
                path = [v]
                while prev[path[-1]] is not None:
                    path.append(prev[path[-1]])
                return path[::-1] + [start]
            if w in comp and w not in prev:
                prev[w] = v
                queue.append(w)
    return [start]


def roots_of(arg):
    if os.path.isfile(arg):
        return [arg]
    found = [os.path.join(arg, f) for f in ("lib.rs", "main.rs") if os.path.isfile(os.path.join(arg, f))]
    bin_dir = os.path.join(arg, "bin")
    if os.path.isdir(bin_dir):
        for e in sorted(os.listdir(bin_dir)):
            p = os.path.join(bin_dir, e)
            if e.endswith(".rs"):
                found.append(p)
            elif os.path.isfile(os.path.join(p, "main.rs")):
                found.append(os.path.join(p, "main.rs"))
    if not found:
        sys.exit(f"import-cycles: no lib.rs, main.rs or bin/ under {arg}")
    return found


def name(mod):
    return "::".join(mod)


cycles = 0
for arg in args:
    for root in roots_of(arg):
        crate = Crate(root)
        edges = crate.edges()
        adj = defaultdict(set)
        for a, b in edges:
            adj[a].add(b)
        print(f"{root}: {len(crate.modules)} modules, {len(edges)} edges")
        if SHOW_EDGES:
            for (a, b), where in sorted(edges.items()):
                print(f"  {name(a)} -> {name(b)}   ({where})")
        for comp in sccs(crate.modules.keys(), adj):
            if len(comp) < 2:
                continue
            cycles += 1
            print(f"  CYCLE among {len(comp)} modules: {', '.join(name(m) for m in comp)}")
            shown = set()
            for start in comp:  # the shortest cycle through each module, each cycle once
                path = shortest_cycle(start, comp, adj)
                key = frozenset(zip(path, path[1:]))
                if len(path) < 2 or key in shown:
                    continue
                shown.add(key)
                print("    " + " -> ".join(name(m) for m in path))
                for a, b in zip(path, path[1:]):
                    print(f"      {name(a)} -> {name(b)}   ({edges[(a, b)]})")
if cycles:
    print(f"{cycles} import cycle(s)")
    sys.exit(1)
print("no import cycles")
PY
