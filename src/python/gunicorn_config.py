# Run by `rwsgi read-gunicorn-config SOURCE` in the embedded interpreter: executes a
# gunicorn config file as gunicorn does (gunicorn/app/base.py: get_config_from_filename,
# get_config_from_module_name) and writes, as TOML, the settings it holds (see
# src/config/gunicorn/file.rs for the format). Globals given: SOURCE, NAMES (gunicorn's
# setting names). Sets FAILED when the file cannot be run.
import ast
import importlib
import importlib.machinery
import importlib.util
import math
import os
import sys
import traceback
import types


def _load(source):
    """The config's namespace and the file it came from, as gunicorn loads it."""
    if source.startswith("python:"):
        module = importlib.import_module(source[len("python:"):])
        return vars(module), getattr(module, "__file__", None)
    path = source[len("file:"):] if source.startswith("file:") else source
    name = "__config__"
    # Any extension: gunicorn runs a file not ending in .py as Python too.
    loader = importlib.machinery.SourceFileLoader(name, path)
    spec = importlib.util.spec_from_file_location(name, path, loader=loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return vars(module), path


def _lines(path):
    """The line of the last top-level binding of each name (not inside functions)."""
    try:
        with open(path, "rb") as f:
            tree = ast.parse(f.read(), path)
    except (OSError, SyntaxError, ValueError):
        return {}
    lines = {}

    def bind(name, line):
        lines[name] = max(line, lines.get(name, 0))

    def visit(node):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bind(node.name, node.lineno)
            return
        if isinstance(node, (ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp,
                             ast.GeneratorExp)):
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                bind((alias.asname or alias.name).split(".")[0], node.lineno)
            return
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            bind(node.id, node.lineno)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return lines


def _string(text):
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif code < 0x20 or code == 0x7F:
            out.append("\\u%04x" % code)
        elif 0xD800 <= code <= 0xDFFF:
            out.append("\\ufffd")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _literal(value, nested=False):
    """`value` as a TOML literal, or None when TOML cannot say it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value) if -2**63 <= value < 2**63 else None
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else None
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, (list, tuple)) and not nested:
        items = [_literal(item, True) for item in value]
        return None if None in items else "[" + ", ".join(items) + "]"
    return None


def _main(out):
    sys.path.insert(0, os.getcwd())
    try:
        namespace, path = _load(SOURCE)
    except BaseException:
        print("Failed to read config file: %s" % SOURCE, file=sys.stderr)
        traceback.print_exc()
        return False
    lines = _lines(path) if path and os.path.isfile(path) else {}
    shown = path if path and not SOURCE.startswith("python:") else (path or SOURCE)
    parts = ["file = %s" % _string(os.fspath(shown))]
    for name in NAMES:
        if name not in namespace or namespace[name] is None:
            continue
        value = namespace[name]
        parts += ["[[setting]]", "name = %s" % _string(name), "line = %d" % lines.get(name, 0)]
        function = (types.FunctionType, types.MethodType, types.BuiltinFunctionType,
                    types.LambdaType)
        literal = _literal(value)
        if isinstance(value, function) or (callable(value) and not isinstance(value, type)
                                           and literal is None):
            parts.append("callable = true")
        elif literal is not None:
            parts.append("value = %s" % literal)
        else:
            parts.append("repr = %s" % _string(repr(value)[:200]))
    out.write(("\n".join(parts) + "\n").encode("utf-8"))
    out.flush()
    return True


# What the file prints goes to stderr, with the error log; fd 1 carries only the result.
_out = os.fdopen(os.dup(1), "wb")
os.dup2(2, 1)
FAILED = not _main(_out)
_out.close()
