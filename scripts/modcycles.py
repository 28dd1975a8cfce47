#!/usr/bin/env python3
"""modcycles: import cycles between the top-level modules of a Rust crate.

    python3 scripts/modcycles.py [SRC_DIR]     (default: src)

A top-level module is what `src/NAME.rs` or `src/NAME/` defines. An edge A -> B
is any `crate::B` path (in `use` lines, grouped `use crate::{..}` lists and
inline paths) in a file of A, comments and string literals left out. main.rs
and lib.rs are not modules. Prints every cycle (strongly connected set of
modules) with the file-level references that make it, then a last line
`modcycles: N cycle(s) among M modules`. Exit 0 when there is none, 1 when
there is, 2 on usage errors. Tests (#[cfg(test)] modules) count too: a test
that needs a module above its own is a hint that something sits too low.
"""
import os
import re
import sys
from collections import defaultdict

def strip(src):
    """Remove comments, string and char literals (keeps line structure)."""
    out, i, n = [], 0, len(src)
    while i < n:
        c = src[i]
        if src.startswith("//", i):
            j = src.find("\n", i)
            i = n if j < 0 else j
        elif src.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if src.startswith("/*", i): depth, i = depth + 1, i + 2
                elif src.startswith("*/", i): depth, i = depth - 1, i + 2
                else:
                    if src[i] == "\n": out.append("\n")
                    i += 1
        elif c == "r" and re.match(r'r#*"', src[i:i + 10]) and (i == 0 or not (src[i-1].isalnum() or src[i-1] == "_")):
            m = re.match(r'r(#*)"', src[i:])
            end = '"' + m.group(1)
            j = src.find(end, i + len(m.group(0)))
            j = n if j < 0 else j + len(end)
            out.append("\n" * src.count("\n", i, j)); i = j
        elif c == '"':
            j = i + 1
            while j < n and src[j] != '"':
                j += 2 if src[j] == "\\" else 1
            out.append("\n" * src.count("\n", i, j)); i = j + 1
        elif c == "'" and re.match(r"'(\\.|[^\\'])'", src[i:i + 4] if src[i+1:i+2] != "\\" else src[i:i + 12]):
            m = re.match(r"'(\\[^']*|[^\\'])'", src[i:])
            i += len(m.group(0)) if m else 1
        else:
            out.append(c); i += 1
    return "".join(out)

def group_heads(body):
    """Top-level names in the body of `use crate::{...}`."""
    heads, depth, cur = [], 0, ""
    for ch in body:
        if ch == "{": depth += 1
        elif ch == "}": depth -= 1
        if depth == 0 and ch == ",":
            heads.append(cur); cur = ""
        else:
            cur += ch if depth == 0 else ""
    heads.append(cur)
    return [re.match(r"\s*([A-Za-z_][A-Za-z0-9_]*)", h).group(1) for h in heads if re.match(r"\s*[A-Za-z_]", h)]

def main():
    args = sys.argv[1:]
    if args and args[0] in ("-h", "--help"):
        print(__doc__.strip()); return 0
    src = args[0] if args else "src"
    if not os.path.isdir(src):
        print(f"modcycles: no directory {src}", file=sys.stderr); return 2
    mods = set()
    for e in os.listdir(src):
        p = os.path.join(src, e)
        if e.endswith(".rs") and e not in ("main.rs", "lib.rs"): mods.add(e[:-3])
        elif os.path.isdir(p) and e != "bin": mods.add(e)
    refs = defaultdict(lambda: defaultdict(set))  # A -> B -> {file:line}
    for root, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs"): continue
            path = os.path.join(root, f)
            rel = os.path.relpath(path, src)
            top = rel.split(os.sep)[0]
            top = top[:-3] if top.endswith(".rs") else top
            if top not in mods: continue
            text = strip(open(path, encoding="utf-8", errors="replace").read())
            for m in re.finditer(r"crate::\s*\{", text):
                depth, j = 1, m.end()
                while j < len(text) and depth:
                    depth += {"{": 1, "}": -1}.get(text[j], 0); j += 1
                line = text.count("\n", 0, m.start()) + 1
                for h in group_heads(text[m.end():j - 1]):
                    if h in mods and h != top: refs[top][h].add(f"{rel}:{line}")
            for m in re.finditer(r"crate::\s*([A-Za-z_][A-Za-z0-9_]*)", text):
                b = m.group(1)
                if b in mods and b != top:
                    refs[top][b].add(f"{rel}:{text.count(chr(10), 0, m.start()) + 1}")
    # Tarjan's strongly connected components
    index, low, stack, on, out, k = {}, {}, [], set(), [], [0]
    def visit(v):
        index[v] = low[v] = k[0]; k[0] += 1; stack.append(v); on.add(v)
        for w in refs[v]:
            if w not in index: visit(w); low[v] = min(low[v], low[w])
            elif w in on: low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop(); on.discard(w); comp.append(w)
                if w == v: break
            if len(comp) > 1: out.append(sorted(comp))
    sys.setrecursionlimit(10000)
    for v in sorted(mods):
        if v not in index: visit(v)
    for i, comp in enumerate(out, 1):
        print(f"cycle {i}: {', '.join(comp)}")
        for a in comp:
            for b in sorted(refs[a]):
                if b in comp:
                    where = sorted(refs[a][b])
                    more = f" (+{len(where) - 3} more)" if len(where) > 3 else ""
                    print(f"  {a} -> {b}: {', '.join(where[:3])}{more}")
    print(f"modcycles: {len(out)} cycle(s) among {len(mods)} modules")
    return 1 if out else 0

if __name__ == "__main__":
    sys.exit(main())
