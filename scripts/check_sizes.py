#!/usr/bin/env python3
"""Size limits for the crates' own code: no file over MAX_FILE lines and no function over MAX_FN lines,
not counting `#[cfg(test)]` modules, `tests/`, `benches/`, `examples/` and generated code.

Usage: python3 scripts/check_sizes.py [--max-file 500] [--max-fn 100] [--report]
Exits 1 and lists the offenders when a limit is passed; `--report` also prints the ten longest functions.

How it reads Rust: comments, strings (plain, raw `r#"..."#`, byte) and char literals are blanked first, so
braces inside them do not count; a function is `fn name` ... up to the `}` that closes its body; a
`#[cfg(test)]` item is dropped with its whole body.
"""
import argparse
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
CRATES = ["common", "worker", "coordinator", "proto"]


def blank(src: str) -> str:
    """The source with comments, strings and char literals replaced by spaces (newlines kept)."""
    out = []
    i, n = 0, len(src)
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
        elif (m := re.match(r'b?r(#*)"', src[i:i + 300])) and (i == 0 or not (src[i - 1].isalnum() or src[i - 1] == "_")):
            end = '"' + m.group(1)
            j = src.find(end, i + m.end())
            j = n if j < 0 else j + len(end)
            out.append(re.sub(r"[^\n]", " ", src[i:j]))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and src[j] != '"':
                j += 2 if src[j] == "\\" else 1
            out.append(re.sub(r"[^\n]", " ", src[i:j + 1]))
            i = j + 1
        elif c == "'" and (m := re.match(r"'(\\(x[0-9a-fA-F]{2}|u\{[0-9a-fA-F]+\}|.)|[^\\'])'", src[i:i + 12])):
            out.append(" " * m.end())
            i += m.end()
        else:
            out.append(c)
            i += 1
    return "".join(out)


def matching_brace(text: str, open_at: int) -> int:
    depth = 0
    for j in range(open_at, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return j
    return len(text) - 1


def drop_test_modules(text: str) -> str:
    """Blanks every item that carries `#[cfg(test)]` (a module, a function, an impl)."""
    while (m := re.search(r"#\[cfg\(test\)\]", text)):
        brace = text.find("{", m.end())
        semi = text.find(";", m.end())
        if semi >= 0 and (brace < 0 or semi < brace):
            end = semi
        else:
            end = matching_brace(text, brace)
        text = text[:m.start()] + re.sub(r"[^\n]", " ", text[m.start():end + 1]) + text[end + 1:]
    return text


def functions(text: str):
    """(name, first line, line count) of every function with a body."""
    for m in re.finditer(r"\bfn\s+([A-Za-z_][A-Za-z0-9_]*)", text):
        # The body is the first `{` after the signature that is not inside (...) or <...> — signatures
        # have no braces except in `where` clauses' trait bounds, which never hold `{` in this code base.
        j, paren = m.end(), 0
        while j < len(text):
            ch = text[j]
            if ch in "([":
                paren += 1
            elif ch in ")]":
                paren -= 1
            elif ch == ";" and paren == 0:
                j = -1  # a declaration without a body (trait method)
                break
            elif ch == "{" and paren == 0:
                break
            j += 1
        if j < 0 or j >= len(text):
            continue
        end = matching_brace(text, j)
        first = text.count("\n", 0, m.start()) + 1
        last = text.count("\n", 0, end) + 1
        yield m.group(1), first, last - first + 1


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-file", type=int, default=500)
    ap.add_argument("--max-fn", type=int, default=100)
    ap.add_argument("--report", action="store_true")
    args = ap.parse_args()
    bad, all_fns, files = [], [], 0
    for crate in CRATES:
        for path in sorted((ROOT / crate / "src").rglob("*.rs")):
            files += 1
            rel = path.relative_to(ROOT)
            text = drop_test_modules(blank(path.read_text()))
            code_lines = sum(1 for line in text.splitlines() if line.strip())
            if code_lines > args.max_file:
                bad.append(f"{rel}: {code_lines} non-blank lines outside tests (limit {args.max_file})")
            for name, line, count in functions(text):
                all_fns.append((count, f"{rel}:{line} {name}"))
                if count > args.max_fn:
                    bad.append(f"{rel}:{line}: fn {name} is {count} lines (limit {args.max_fn})")
    if args.report:
        for count, where in sorted(all_fns, reverse=True)[:10]:
            print(f"{count:5}  {where}")
    print(f"check_sizes: {files} files, {len(all_fns)} functions in {', '.join(CRATES)}; {len(bad)} over the limits")
    for b in bad:
        print("  " + b)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
