#!/usr/bin/env python3
"""Checks that src/ imports one way (README, Layout): fails when a module imports one of
a higher layer (a role importing the master, say) or when modules import each other in
a circle.

The graph is read from the source: every `use` path and every path written out in the
code (`crate::x::y`, `super::y`, `child::y`) is an edge from the module it is written in
to the deepest module it names. Two rules:

1. Layers. The top-level modules sit in the layers of LAYERS, bottom first; a module
   may import one of a lower layer only (the leaves of layer 0 may import each other).
   A new top-level module fails until it is given a layer.
2. No circle. Among the children of any module (files and folders, a folder standing
   for everything beneath it), the imports form no circle. A child naming its own
   parent's items is not counted here.

Run by scripts/test (`scripts/check_imports.py [SRC]`, src/ by default); prints each fault with the file and line that makes it.
"""

import functools
import os
import re
import sys
from collections import defaultdict

# Bottom first. Role entry points live in `front`, `worker` and `master`; `main` (the
# executable and lib.rs's `run`) is above them all.
LAYERS = [
    {"cli", "log", "procfs", "protocol", "exit", "scoreboard", "lock", "process_env",
     "error_page", "seeded"},
    {"config"},
    {"python"},
    {"front", "worker", "watcher"},
    {"master"},
]
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")


def blank(text):
    """`text` with comments, strings and char literals blanked (lines kept)."""
    pattern = re.compile(
        r'//[^\n]*|/\*.*?\*/|b?r(#*)".*?"\1|b?"(?:\\.|[^"\\])*"|'
        r"b?'(?:\\.[^']*|[^'\\])'",
        re.S,
    )
    return pattern.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)


def use_paths(tree):
    """The paths of one use tree: `a::{b, c::{d, e}}` gives a::b, a::c::d, a::c::e."""
    tree = re.sub(r"\s+", "", tree)
    brace = tree.find("{")
    if brace < 0:
        return [tree]
    prefix, inner = tree[:brace], tree[brace + 1 : tree.rindex("}")]
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(inner + ","):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            parts.append(inner[start:i])
            start = i + 1
    return [p for part in parts if part for p in use_paths(prefix + part)]


class Crate:
    def __init__(self, root):
        self.files = {}  # module path (tuple) -> (file, blanked text)
        self.inline = {}  # inline module path -> its file's module path
        self.load(("crate",), os.path.join(root, "lib.rs"), root)

    def load(self, module, path, directory):
        """Reads `path` as `module`, then the files of the `mod x;` it declares."""
        text = blank(open(path, encoding="utf-8").read())
        self.files[module] = (path, text)
        for start, _, name in self.blocks(text):
            self.inline[self.module_at(module, text, start) + (name,)] = module
        decl = re.compile(r'(?:#\[path\s*=\s*"([^"]+)"\]\s*)?(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;')
        # The #[path] text is blanked as a string: read it from the original.
        original = open(path, encoding="utf-8").read()
        for m in decl.finditer(original):
            if text[m.start(2) - 4 : m.start(2) - 1] != "mod":
                continue  # in a comment or a string
            explicit, name = m.group(1), m.group(2)
            if explicit:
                child = os.path.join(os.path.dirname(path), explicit)
                self.load(module + (name,), child, os.path.dirname(child))
                continue
            own = directory if path.endswith(("mod.rs", "lib.rs")) else path[:-3]
            flat, nested = os.path.join(own, name + ".rs"), os.path.join(own, name, "mod.rs")
            child = flat if os.path.exists(flat) else nested
            self.load(module + (name,), child, os.path.dirname(child))

    @staticmethod
    @functools.cache
    def blocks(text):
        """(start, end, name) of each inline `mod name { … }`."""
        found = []
        for m in re.finditer(r"\bmod\s+(\w+)\s*\{", text):
            depth, i = 1, m.end()
            while depth and i < len(text):
                depth += {"{": 1, "}": -1}.get(text[i], 0)
                i += 1
            found.append((m.start(), i, m.group(1)))
        return found

    def module_at(self, module, text, offset):
        """The module (with inline ones) that the code at `offset` is in."""
        for start, end, name in self.blocks(text):
            if start < offset < end:
                module = module + (name,)
        return module

    def known(self, module):
        return module in self.files or module in self.inline

    def resolve(self, here, children, path):
        """The deepest module `path`, written in module `here`, names; None if outside."""
        segments = path.split("::")
        if segments[0] == "crate":
            module, segments = ("crate",), segments[1:]
        elif segments[0] in ("self", "super"):
            module = here
            while segments and segments[0] in ("self", "super"):
                module = module[:-1] if segments[0] == "super" else module
                segments = segments[1:]
        elif segments[0] in children:
            module, segments = here + (segments[0],), segments[1:]
        else:
            return None  # another crate, or a local item
        while segments and self.known(module + (segments[0],)):
            module, segments = module + (segments[0],), segments[1:]
        return module

    def imports(self):
        """(from module, to module, file, line) for every path between two files."""
        for module, (path, text) in self.files.items():
            text = re.sub(r"pub\(in [\w:]+\)", lambda m: " " * len(m.group(0)), text)
            children = set(re.findall(r"\bmod\s+(\w+)\s*;", text))
            found = []
            for m in re.finditer(r"\buse\s+([^;]+);", text):
                found += [(m.start(), p) for p in use_paths(m.group(1))]
            for m in re.finditer(r"(?<![\w:])((?:crate|super|self|[a-z_]\w*)(?:\s*::\s*\w+)+)", text):
                found.append((m.start(), re.sub(r"\s+", "", m.group(1))))
            for offset, written in found:
                here = self.module_at(module, text, offset)
                target = self.resolve(here, children if here == module else set(), written)
                if target is None:
                    continue
                target = self.inline.get(target, target)
                while target not in self.files:
                    target = target[:-1]
                if target != module:
                    yield module, target, path, text.count("\n", 0, offset) + 1


def circles(edges):
    """The strongly connected components of more than one node (Tarjan)."""
    index, low, stack, found, counter = {}, {}, [], [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        for other in edges.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in list(edges):
        if node not in index:
            visit(node)
    return found


def faults(crate):
    layer = {name: n for n, names in enumerate(LAYERS) for name in names}
    siblings = defaultdict(lambda: defaultdict(list))  # a -> b -> where
    problems = []
    for source, target, path, line in crate.imports():
        where = f"{os.path.relpath(path)}:{line}"
        common = 0
        while common < min(len(source), len(target)) and source[common] == target[common]:
            common += 1
        if common < len(source) and common < len(target):
            siblings[source[: common + 1]][target[: common + 1]].append(where)
        if len(source) < 2 or len(target) < 2 or source[1] == target[1]:
            continue
        low, high = source[1], target[1]
        for name in (low, high):
            if name not in layer:
                problems.append(f"{where}: module `{name}` has no layer in {__file__}")
        if low in layer and high in layer and not (
            layer[high] < layer[low] or layer[high] == layer[low] == 0
        ):
            what = "a role imports the master" if high == "master" else "imports upward"
            problems.append(f"{where}: {what}: `{low}` (layer {layer[low]}) uses "
                            f"`{'::'.join(target[1:])}` (layer {layer[high]})")
    for component in circles(siblings):
        names = ", ".join("::".join(m[1:]) for m in component)
        problems.append(f"import circle between {names}:")
        for a in component:
            for b in component:
                if siblings[a].get(b):
                    problems.append(f"    {'::'.join(a[1:])} -> {'::'.join(b[1:])} "
                                    f"at {', '.join(sorted(set(siblings[a][b]))[:3])}")
    return sorted(set(problems), key=problems.index)


def main():
    # Another tree's src/ may be named, to see what the check says of it.
    root = sys.argv[1] if len(sys.argv) > 1 else ROOT
    problems = faults(Crate(os.path.normpath(root)))
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"check_imports: {len(problems)} fault(s); see README, Layout", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
