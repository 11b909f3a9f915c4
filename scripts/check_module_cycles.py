#!/usr/bin/env python3
"""Reports import cycles between the modules of each Rust crate of the workspace.

Usage: scripts/check_module_cycles.py [CRATE_DIR ...]   (default: common worker coordinator proto tests)
Exit status 1 when a cycle is found.

How it reads the code (text, not a compiler):
- Modules are files: src/lib.rs or src/main.rs is the crate root, src/a.rs and src/a/mod.rs are `a`,
  src/a/b.rs is `a::b`. `#[cfg(test)]` blocks are left out (tests may look anywhere).
- An edge m -> n is any path that names module n from m: `crate::n::...`, `super::...`, `self::...`,
  `use` trees with braces, and bare `n::...` paths after a `use crate::n` import. A path through the
  crate root (`crate::Error`) is resolved through the root's `pub use` re-exports.
- Two levels are checked:
  1. top level: every module collapsed into its top-level module (`preprocess::dataset` -> `preprocess`);
     the graph must be acyclic (this is the layering between pipeline stages);
  2. siblings: inside each module with submodules, its children (grandchildren collapsed into them);
     edges to and from the parent's own file are left out, since a parent declares and re-exports
     its children and they may use the types it defines.
"""
import os
import re
import sys

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def strip_comments_and_strings(src):
    src = re.sub(r"/\*.*?\*/", "", src, flags=re.S)
    out = []
    for line in src.split("\n"):
        line = re.sub(r'r#*"[^"]*"#*', '""', line)
        line = re.sub(r'"(\\.|[^"\\])*"', '""', line)
        line = re.sub(r"'(\\.|[^'\\])'", "''", line)
        i = line.find("//")
        out.append(line if i < 0 else line[:i])
    return "\n".join(out)


def strip_cfg_test(src):
    """Removes `#[cfg(test)] <item> { ... }` and `#[cfg(test)] <item>;`."""
    while True:
        m = re.search(r"#\[cfg\(test\)\]", src)
        if not m:
            return src
        j = m.end()
        # the item ends at the first ';' before any '{', or at the matching '}'
        k_semi = src.find(";", j)
        k_brace = src.find("{", j)
        if k_brace < 0 or (0 <= k_semi < k_brace):
            src = src[: m.start()] + src[k_semi + 1 :]
            continue
        depth = 0
        k = k_brace
        while k < len(src):
            if src[k] == "{":
                depth += 1
            elif src[k] == "}":
                depth -= 1
                if depth == 0:
                    break
            k += 1
        src = src[: m.start()] + src[k + 1 :]


def module_files(crate_dir):
    src = os.path.join(crate_dir, "src")
    mods = {}
    for dp, _, fns in os.walk(src):
        for fn in fns:
            if not fn.endswith(".rs"):
                continue
            rel = os.path.relpath(os.path.join(dp, fn), src)[:-3].split(os.sep)
            if rel in (["lib"], ["main"]):
                path = ()
            elif rel[-1] == "mod":
                path = tuple(rel[:-1])
            else:
                path = tuple(rel)
            mods[path] = os.path.join(dp, fn)
    return mods


def expand_use_tree(tree):
    """`a::{b, c::{d, e}}` -> [a::b, a::c::d, a::c::e] (aliases and globs kept as written)."""
    tree = re.sub(r"\s+as\s+", " as ", tree.strip())
    tree = re.sub(r"\s*(::|,|\{|\})\s*", r"\1", tree)
    i = tree.find("{")
    if i < 0:
        return [tree]
    prefix, body = tree[:i], tree[i + 1 : tree.rfind("}")]
    parts, depth, cur = [], 0, ""
    for ch in body:
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        depth += ch == "{"
        depth -= ch == "}"
        cur += ch
    parts.append(cur)
    out = []
    for p in parts:
        if p:
            out += [prefix + x for x in expand_use_tree(p)]
    return out


def resolve(mod, segs, mods):
    """Absolute segments of a path written in `mod`; None when it does not start in this crate."""
    if not segs:
        return None
    if segs[0] == "crate":
        base, rest = (), segs[1:]
    elif segs[0] == "self":
        base, rest = mod, segs[1:]
    elif segs[0] == "super":
        base, rest = mod, segs
        while rest and rest[0] == "super":
            base, rest = base[:-1], rest[1:]
    elif (mod + (segs[0],)) in mods:
        base, rest = mod, segs
    else:
        return None
    return base + tuple(s for s in rest if s not in ("self",))


def longest_module(path, mods):
    for n in range(len(path), -1, -1):
        if path[:n] in mods:
            return path[:n]
    return ()


def scan_crate(crate_dir):
    mods = module_files(crate_dir)
    raw = {m: strip_comments_and_strings(open(f).read()) for m, f in mods.items()}
    # files declared `#[cfg(test)] mod name;` are test code, like `#[cfg(test)]` blocks
    test_only = set()
    for m, text in raw.items():
        for child in re.findall(rf"#\[cfg\(test\)\]\s*(?:pub(?:\([a-z]+\))?\s+)?mod\s+({IDENT})\s*;", text):
            test_only.add(m + (child,))
    texts = {
        m: strip_cfg_test(t) for m, t in raw.items() if not any(m[: len(x)] == x for x in test_only)
    }
    mods = {m: f for m, f in mods.items() if m in texts}
    # re-exports of the crate root: name -> absolute path
    root_exports = {}
    for tree in re.findall(r"\bpub\s+use\s+([^;]+);", texts.get((), "")):
        for p in expand_use_tree(tree):
            segs = p.split("::")
            last = segs[-1].split(" as ")
            segs[-1] = last[0]
            abs_ = resolve((), segs, mods)
            if abs_:
                root_exports[last[-1]] = abs_
    edges = {}
    for m, text in texts.items():
        targets = set()
        paths = []
        for tree in re.findall(r"\buse\s+([^;]+);", text):
            paths += [p.split("::") for p in expand_use_tree(tree)]
        for p in re.findall(rf"\b(?:crate|super|self)(?:::{IDENT})+", text):
            paths.append(p.split("::"))
        # names imported as modules (`use crate::imageio;` then `imageio::read_seg`)
        for p in re.findall(rf"\b({IDENT})::{IDENT}", text):
            if (m + (p,)) in mods:
                paths.append([p, "_"])
        for segs in paths:
            segs = [s.split(" as ")[0] for s in segs]
            abs_ = resolve(m, [s for s in segs if s != "*"], mods)
            if abs_ is None:
                continue
            if len(abs_) >= 1 and abs_[:1] != () and (abs_[:1]) not in mods and abs_[0] in root_exports:
                abs_ = root_exports[abs_[0]] + abs_[1:]
            t = longest_module(abs_, mods)
            if t != m:
                targets.add(t)
        edges[m] = targets
    return mods, edges


def find_cycles(nodes, edges):
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
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

    sys.setrecursionlimit(10000)
    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return sccs


def name(p):
    return "::".join(p) or "crate"


def check(crate_dir, label=None):
    label = label or crate_dir
    mods, edges = scan_crate(crate_dir)
    problems = []
    # 1. top level
    top = {}
    for m, ts in edges.items():
        if not m:
            continue
        for t in ts:
            if t and t[:1] != m[:1]:
                top.setdefault(m[:1], set()).add(t[:1])
    nodes = {m[:1] for m in mods if m}
    for c in find_cycles(nodes, top):
        detail = "; ".join(f"{name(a)} -> {name(b)}" for a in c for b in sorted(top.get(a, ())) if b in c)
        problems.append(f"{label}: cycle between top-level modules {', '.join(name(x) for x in c)} ({detail})")
    # 2. siblings inside each module with submodules
    for parent in sorted({m[:-1] for m in mods if len(m) > 1}):
        kids = {m[: len(parent) + 1] for m in mods if len(m) > len(parent) and m[: len(parent)] == parent}
        sib = {}
        for m, ts in edges.items():
            if len(m) <= len(parent) or m[: len(parent)] != parent:
                continue
            a = m[: len(parent) + 1]
            for t in ts:
                if len(t) > len(parent) and t[: len(parent)] == parent:
                    b = t[: len(parent) + 1]
                    if a != b:
                        sib.setdefault(a, set()).add(b)
        for c in find_cycles(kids, sib):
            detail = "; ".join(f"{name(a)} -> {name(b)}" for a in c for b in sorted(sib.get(a, ())) if b in c)
            problems.append(f"{label}: cycle between sibling modules {', '.join(name(x) for x in c)} ({detail})")
    n_edges = sum(len(v) for v in edges.values())
    return problems, len(mods), n_edges


def main():
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    crates = sys.argv[1:] or ["common", "worker", "coordinator", "proto", "tests"]
    bad = False
    for c in crates:
        d = c if os.path.isabs(c) else os.path.join(root, c)
        if not os.path.isdir(os.path.join(d, "src")):
            continue
        problems, n_mods, n_edges = check(d, c)
        for p in problems:
            print(p)
        print(f"{c}: {n_mods} modules, {n_edges} module edges, {len(problems)} cycle(s)")
        bad |= bool(problems)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
