#!/usr/bin/env python3
"""Print import cycles among src's modules (exit 1 if any): no module may import one that
imports it back, directly or through others.

Each source file is a module (`src/api/route.rs` is `api::route`, `src/api/mod.rs` is `api`). A
module depends on another when it names it, or an item in it, through `crate::` or `super::`
(in a `use` line or inline); `mod x;` declarations are not imports. Comments and test modules
(from `#[cfg(test)] mod …` to the end of the file) are ignored. For each cycle, prints the
references among its modules.
"""
import os
import re
import sys

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")


def strip(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    m = re.search(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*\{", text)
    if m:
        text = text[: m.start()]
    return text


def expand_use(body):
    """Expand a `use` tree (without `use` and `;`) into full paths."""
    body = re.sub(r"\s+as\s+\w+", "", body)
    body = re.sub(r"\s+", "", body)
    out = []

    def walk(prefix, s):
        # split s at top-level commas
        depth, start, parts = 0, 0, []
        for i, c in enumerate(s):
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
            elif c == "," and depth == 0:
                parts.append(s[start:i])
                start = i + 1
        parts.append(s[start:])
        for p in parts:
            if not p:
                continue
            i = p.find("{")
            if i >= 0 and p.endswith("}"):
                walk(prefix + p[:i], p[i + 1 : -1])
            else:
                out.append(prefix + p)

    walk("", body)
    return out


def modules():
    mods = {}
    for root, _, files in os.walk(SRC):
        for f in files:
            if not f.endswith(".rs"):
                continue
            full = os.path.join(root, f)
            rel = os.path.relpath(full, SRC)[:-3].split(os.sep)
            if rel[-1] == "mod":
                rel = rel[:-1]
            if rel in (["lib"], ["main"]):
                continue
            mods["::".join(rel)] = full
    return mods


def references(path, name, mods):
    text = strip(open(path, encoding="utf-8").read())
    paths = []
    for m in re.finditer(r"\buse\s+([^;]+);", text):
        paths += expand_use(m.group(1))
    text_wo_use = re.sub(r"\buse\s+[^;]+;", "", text)
    paths += re.findall(r"\b(?:crate|super)(?:::\w+)+", text_wo_use)
    here = name.split("::")
    is_dir_mod = path.endswith("mod.rs")
    refs = set()
    for p in paths:
        segs = p.split("::")
        if segs[0] == "crate":
            segs = segs[1:]
        elif segs[0] in ("super", "self"):
            base = here if is_dir_mod else here[:-1]
            if segs[0] == "self":
                base = here
                segs = segs[1:]
            while segs and segs[0] == "super":
                base = base[:-1]
                segs = segs[1:]
            segs = base + segs
        else:
            continue
        # longest known module prefix
        for n in range(len(segs), 0, -1):
            cand = "::".join(segs[:n])
            if cand in mods:
                refs.add(cand)
                break
    refs.discard(name)
    return refs


def main():
    mods = modules()
    graph = {n: references(p, n, mods) for n, p in mods.items()}
    # Tarjan's strongly connected components
    index, low, stack, on, sccs = {}, {}, [], set(), []
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    if not sccs:
        print(f"no import cycles among {len(mods)} modules")
        return 0
    for comp in sccs:
        print("cycle among: " + ", ".join(comp))
        for a in comp:
            print(f"  {a} -> " + ", ".join(sorted(b for b in graph[a] if b in comp)))
    return 1


if __name__ == "__main__":
    sys.exit(main())
