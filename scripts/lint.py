#!/usr/bin/env python3
"""The structure check: fails on what makes the tree hard to read.

- an import cycle between sibling modules of one crate (at every level of
  the module tree: the top-level modules of a crate, the files of one
  folder), found from `crate::` and `super::` paths;
- a non-test source file over 600 lines (lines of inline `#[cfg(test)]`
  modules do not count; files under tests/, benches/ and fuzz/ are tests);
- a non-test function over 100 lines.

Usage: scripts/lint.py [ROOT]    exit 0 clean, 1 findings (listed), 2 usage.
Self-test: scripts/lint.py --self-test
"""
import os
import re
import sys

MAX_FILE_LINES = 600
MAX_FN_LINES = 100
FN_RE = re.compile(r"^\s*(?:pub(?:\([^)]*\))?\s+)?(?:const\s+)?(?:async\s+)?(?:unsafe\s+)?(?:extern\s+\"C\"\s+)?fn\s+(\w+)")
TEST_MOD_RE = re.compile(r"^\s*#\[cfg\((?:all\()?test")
PATH_RE = re.compile(r"\b(crate|super)((?:::\w+)+)")
USE_GROUP_RE = re.compile(r"\buse\s+(crate|super)((?:::\w+)*)::\{", re.S)


def strip_code(text):
    """Blanks string literals, char literals and comments (keeps line breaks),
    so that braces and paths are counted only in code."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == "r" and re.match(r'r#*"', text[i:i + 10]) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            m = re.match(r'r(#*)"', text[i:])
            end = '"' + m.group(1)
            j = text.find(end, i + len(m.group(0)))
            j = n if j < 0 else j + len(end)
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            j += 1
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == "'":
            m = re.match(r"'(\\.[^']*|[^'\\])'", text[i:])
            if m:
                out.append(" " * len(m.group(0)))
                i += len(m.group(0))
            else:  # a lifetime
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def block_end(lines, start):
    """Index of the line that closes the first `{` at or after `start`
    (None when the item has no body, e.g. a trait method declaration)."""
    depth, opened = 0, False
    for k in range(start, len(lines)):
        for ch in lines[k]:
            if ch == "{":
                depth, opened = depth + 1, True
            elif ch == "}":
                depth -= 1
            elif ch == ";" and not opened and depth == 0:
                return None
        if opened and depth == 0:
            return k
    return None


def test_ranges(lines):
    """Line ranges of `#[cfg(test)]` items (inline test modules)."""
    ranges = []
    k = 0
    while k < len(lines):
        if TEST_MOD_RE.match(lines[k]):
            end = block_end(lines, k)
            if end is not None:
                ranges.append((k, end))
                k = end
        k += 1
    return ranges


def check_file(path, rel, findings):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    lines = strip_code(text).split("\n")
    tests = test_ranges(lines)
    in_test = lambda k: any(a <= k <= b for a, b in tests)
    code_lines = sum(1 for k in range(len(lines)) if not in_test(k))
    if code_lines > MAX_FILE_LINES:
        findings.append(f"{rel}: {code_lines} lines of non-test code (limit {MAX_FILE_LINES})")
    for k, line in enumerate(lines):
        m = FN_RE.match(line)
        if not m or in_test(k):
            continue
        end = block_end(lines, k)
        if end is not None and end - k + 1 > MAX_FN_LINES:
            findings.append(f"{rel}:{k + 1}: fn {m.group(1)} is {end - k + 1} lines (limit {MAX_FN_LINES})")
    return lines


def module_of(src, path):
    """Module path (tuple) of a file under a crate's src/."""
    rel = os.path.relpath(path, src)[:-3].split(os.sep)
    if rel[-1] in ("mod", "lib", "main"):
        rel = rel[:-1]
    return tuple(rel)


def referenced(mod, is_dir_mod, code):
    """Absolute module paths (tuples) that `code` of module `mod` names."""
    base_super = mod if is_dir_mod else mod[:-1]
    refs = []

    def resolve(root, rest):
        parts = [p for p in rest.split("::") if p]
        if root == "crate":
            base = ()
        else:
            base = base_super[:-1] if is_dir_mod else base_super
            while parts and parts[0] == "super":
                base, parts = base[:-1], parts[1:]
        return base + tuple(parts)

    for m in PATH_RE.finditer(code):
        refs.append(resolve(m.group(1), m.group(2)))
    for m in USE_GROUP_RE.finditer(code):
        start = m.end()
        depth, j = 1, start
        while j < len(code) and depth:
            depth += {"{": 1, "}": -1}.get(code[j], 0)
            j += 1
        for name in re.findall(r"(?:^|[,{])\s*(\w+)", code[start:j - 1]):
            if name not in ("self", "super", "crate"):
                refs.append(resolve(m.group(1), m.group(2) + "::" + name))
    return refs


def find_cycles(nodes, edges):
    """Strongly connected components of more than one node (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
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
                out.append(sorted(comp))

    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return out


PUB_USE_RE = re.compile(r"\bpub\s+use\s+((?:\w+::)*)(?:\{([^}]*)\}|(\w+))\s*;")


def reexports(files):
    """{(module + name): defining module} for `pub use child::...` lines of
    folder modules, so a path through a parent's re-export counts as a
    path to the module that defines the item."""
    alias = {}
    for mod, (is_dir_mod, code) in files.items():
        if not is_dir_mod:
            continue
        for m in PUB_USE_RE.finditer(code):
            prefix = [p for p in m.group(1).split("::") if p]
            if prefix and prefix[0] == "self":
                prefix = prefix[1:]
            if not prefix or prefix[0] in ("crate", "super"):
                continue
            names = [m.group(3)] if m.group(3) else re.findall(r"(\w+)\s*(?:,|$)", m.group(2).strip())
            for name in names:
                alias[mod + (name,)] = mod + tuple(prefix)
    return alias


def check_cycles(src, crate, files, findings):
    """files: {module tuple: (is_dir_mod, stripped code)}"""
    modules = set(files)
    alias = reexports(files)
    edges = {}  # (parent, child_a) -> child_b
    for mod, (is_dir_mod, code) in files.items():
        for ref in referenced(mod, is_dir_mod, code):
            for k in range(len(ref), 0, -1):
                if ref[:k] in alias:
                    ref = alias[ref[:k]] + ref[k:]
                    break
            # the longest known module that prefixes the path
            target = next((ref[:k] for k in range(len(ref), -1, -1) if ref[:k] in modules), None)
            if target is None:
                continue
            # the first level where mod and target part ways
            k = 0
            while k < min(len(mod), len(target)) and mod[k] == target[k]:
                k += 1
            if k == len(mod) or k == len(target):
                continue  # one is an ancestor of the other: not a sibling edge
            parent = mod[:k]
            edges.setdefault(parent, {}).setdefault(mod[k], set()).add(target[k])
    for parent, graph in sorted(edges.items()):
        nodes = set(graph) | {w for ws in graph.values() for w in ws}
        for comp in find_cycles(nodes, graph):
            where = "::".join((crate,) + parent)
            findings.append(f"{crate}: import cycle between modules of {where}: {' <-> '.join(comp)}")


def is_test_path(rel):
    parts = rel.split(os.sep)
    return any(p in ("tests", "benches", "fuzz", "target", "node_modules", ".git") for p in parts)


def lint(root):
    findings = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in ("target", ".git", "node_modules"))
        if os.path.basename(dirpath) != "src" or "Cargo.toml" not in os.listdir(os.path.dirname(dirpath)):
            continue
        crate = os.path.relpath(os.path.dirname(dirpath), root)
        if is_test_path(crate):
            continue
        files = {}
        for sub, _, names in os.walk(dirpath):
            for name in sorted(names):
                if not name.endswith(".rs"):
                    continue
                path = os.path.join(sub, name)
                rel = os.path.relpath(path, root)
                lines = check_file(path, rel, findings)
                if os.path.relpath(sub, dirpath).split(os.sep)[0] == "bin":
                    continue  # binaries are crates of their own
                if name == "main.rs" and sub == dirpath:
                    continue
                files[module_of(dirpath, path)] = (name in ("mod.rs", "lib.rs"), "\n".join(lines))
        check_cycles(dirpath, crate, files, findings)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in ("target", ".git", "node_modules")]
        rel_dir = os.path.relpath(dirpath, root)
        if "examples" in rel_dir.split(os.sep) and not is_test_path(rel_dir):
            for name in sorted(filenames):
                if name.endswith(".rs"):
                    check_file(os.path.join(dirpath, name), os.path.join(rel_dir, name), findings)
    return findings


def self_test():
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "c", "src")
        os.makedirs(os.path.join(src, "a"))
        open(os.path.join(d, "c", "Cargo.toml"), "w").close()
        w = lambda p, t: open(os.path.join(src, p), "w").write(t)
        w("lib.rs", "mod a;\nmod b;\n")
        w("a/mod.rs", "mod x;\nmod y;\nuse crate::b::B;\n")
        w("a/x.rs", "use super::y::Y;\n")
        w("a/y.rs", "pub struct Y;\n// use super::x::X;\nconst S: &str = \"crate::b::B\";\n")
        w("b.rs", "pub struct B;\nfn f() {\n" + "    let _ = 1;\n" * 120 + "}\n"
          "#[cfg(test)]\nmod tests {\n    fn long() {\n" + "    let _ = 1;\n" * 700 + "}\n}\n")
        found = lint(d)
        assert found == ["c/src/b.rs:2: fn f is 122 lines (limit 100)"], found
        w("b.rs", "use crate::a::x::X;\npub struct B;\n")
        found = lint(d)
        assert len(found) == 1 and "a <-> b" in found[0], found
        w("b.rs", "pub struct B;\n")
        w("a/y.rs", "use super::{x::X, z};\n")
        found = lint(d)
        assert len(found) == 1 and "x <-> y" in found[0], found
        # a cycle through a parent's re-export is still a cycle
        w("a/mod.rs", "mod x;\nmod y;\npub use y::Y;\npub use x::{X, Z};\n")
        w("a/y.rs", "use crate::a::X;\npub struct Y;\n")
        w("a/x.rs", "use super::Y;\npub struct X;\n")
        found = lint(d)
        assert len(found) == 1 and "x <-> y" in found[0], found
        w("a/x.rs", "pub struct X;\n")
        w("a/y.rs", "\n" * 601 + "pub struct Y;\n")
        found = lint(d)
        assert found == ["c/src/a/y.rs: 603 lines of non-test code (limit 600)"], found
    print("lint self-test: 5 passed")


def main():
    if sys.argv[1:] == ["--self-test"]:
        self_test()
        return 0
    if len(sys.argv) > 2:
        print(__doc__, file=sys.stderr)
        return 2
    root = sys.argv[1] if len(sys.argv) == 2 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    findings = lint(root)
    for f in findings:
        print(f)
    if findings:
        print(f"structure check: {len(findings)} finding(s)", file=sys.stderr)
        return 1
    print("structure check: clean")
    return 0


if __name__ == "__main__":
    sys.exit(main())
