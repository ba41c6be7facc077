"""Fails if a crate's modules import each other in a cycle.

Edges come from two places: `cargo modules dependencies` (crates.io `cargo-modules`), which
resolves every `use` (re-exports, `super::`, globs), and the crate's sources, for the paths it
does not see: `crate::a::b` written inline in code (`crate::metrics::get()`), outside comments.
A module may use its own children; any other cycle is printed and fails the check.

    python3 scripts/check-layers.py <crate name> <src dir> < dependencies.dot
"""

import os
import re
import sys


def use_edges(dot, crate):
    edges = set()
    for line in dot.splitlines():
        m = re.match(r'\s*"([^"]+)" -> "([^"]+)"', line)
        if m and 'label="uses"' in line:
            edges.add((m.group(1).replace(crate, "crate", 1), m.group(2).replace(crate, "crate", 1)))
    return edges


def module_of(root, path):
    rel = os.path.relpath(path, root)[:-3].split(os.sep)
    if rel[-1] in ("mod", "lib"):
        rel = rel[:-1]
    return "::".join(["crate"] + rel)


def inline_edges(root, modules):
    edges = set()
    for dirpath, _, files in os.walk(root):
        for f in files:
            if not f.endswith(".rs") or dirpath.startswith(os.path.join(root, "bin")):
                continue
            path = os.path.join(dirpath, f)
            if path == os.path.join(root, "main.rs"):
                continue
            src = open(path, encoding="utf-8").read().split("#[cfg(test)]")[0]
            here = module_of(root, path)
            for line in src.splitlines():
                code = line.split("//")[0]
                for hit in re.findall(r"\bcrate((?:::[a-z_][a-z0-9_]*)+)", code):
                    parts = ("crate" + hit).split("::")
                    # The longest prefix that is a module.
                    while len(parts) > 1 and "::".join(parts) not in modules:
                        parts.pop()
                    target = "::".join(parts)
                    if target != "crate":
                        edges.add((here, target))
    return edges


def cycles(edges):
    graph = {}
    for a, b in edges:
        # A module may use its descendants; a child using its parent is a real edge.
        if a == b or b.startswith(a + "::"):
            continue
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set())
    index, low, stack, on, found = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
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
                found.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found, graph


def main():
    crate, root = sys.argv[1], sys.argv[2]
    edges = use_edges(sys.stdin.read(), crate)
    modules = {a for a, _ in edges} | {b for _, b in edges}
    for dirpath, _, files in os.walk(root):
        for f in files:
            if f.endswith(".rs"):
                modules.add(module_of(root, os.path.join(dirpath, f)))
    edges |= inline_edges(root, modules)
    found, graph = cycles(edges)
    for comp in found:
        print(f"{crate}: these modules import each other in a cycle:")
        for m in comp:
            inside = sorted(set(graph[m]) & set(comp))
            print(f"  {m} -> {', '.join(inside)}")
    if found:
        sys.exit(1)
    print(f"{crate}: {len(graph)} modules, {sum(map(len, graph.values()))} imports, no cycle")


main()
