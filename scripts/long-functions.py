#!/usr/bin/env python3
"""Lists Rust functions longer than a limit (default 80 lines), test modules excluded.

    scripts/long-functions.py processor/src/detect [--max 80]

Exits 1 when one is found. A function is counted from its `fn` line to the line of its closing brace, found by
brace depth (strings and comments with braces are rare enough in this tree to be ignored)."""
import re
import sys
from pathlib import Path

def functions(path):
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if re.match(r'\s*#\[cfg\(test\)\]', line):
            return  # the rest of the file is its test module, by this tree's convention
        m = re.match(r'\s*(pub(\([^)]*\))?\s+)?(const\s+)?(async\s+)?fn\s+(\w+)', line)
        if m:
            depth, j, opened = 0, i, False
            while j < len(lines):
                depth += lines[j].count('{') - lines[j].count('}')
                opened = opened or '{' in lines[j]
                if opened and depth <= 0:
                    break
                if not opened and lines[j].rstrip().endswith(';'):
                    break
                j += 1
            yield m.group(5), i + 1, j - i + 1
        i += 1

def main():
    args = sys.argv[1:]
    limit = 80
    if '--max' in args:
        k = args.index('--max')
        limit = int(args[k + 1])
        del args[k:k + 2]
    found = 0
    for root in args or ['.']:
        for path in sorted(Path(root).rglob('*.rs')):
            if path.name == 'tests.rs':
                continue
            for name, line, length in functions(path):
                if length > limit:
                    print(f'{path}:{line}: fn {name} is {length} lines (limit {limit})')
                    found += 1
    sys.exit(1 if found else 0)

main()
