"""Checks on what the user asked to run, before anything is launched (one clear line when it is wrong)."""

from __future__ import annotations

import os
import re

from torchdoctor.errors import UsageError

_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def check_script(path: str) -> None:
    """Raise UsageError unless ``path`` is a readable Python script that compiles."""
    if not os.path.exists(path):
        raise UsageError(f"no such script: {path}")
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, "__main__.py")):
            return  # python runs a directory with __main__.py; so do we
        raise UsageError(f"{path} is a directory, not a Python script")
    try:
        with open(path, "rb") as handle:
            source = handle.read()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    if b"\0" in source:
        raise UsageError(f"{path} is not a Python script (it is a binary file)")
    first_line = source.split(b"\n", 1)[0]
    if not path.endswith((".py", ".pyw")) and not (first_line.startswith(b"#!") and b"python" in first_line):
        raise UsageError(f"{path} is not a Python script (expected a .py file or a python shebang)")
    try:
        compile(source, path, "exec", dont_inherit=True)
    except SyntaxError as exc:
        where = f"{path}:{exc.lineno}" if exc.lineno else path
        raise UsageError(f"syntax error in {where}: {exc.msg}") from None
    except ValueError as exc:  # e.g. source code cannot contain null bytes
        raise UsageError(f"{path} is not a Python script ({exc})") from None


def check_module(name: str) -> None:
    """Raise UsageError unless ``name`` looks like a module whose top-level package can be found.

    Only the top-level name is looked up: finding ``a.b`` would import package ``a``, running user code in
    the supervisor. A missing submodule is reported by the child exactly as ``python -m`` does.
    """
    if not _MODULE_NAME.match(name):
        raise UsageError(f"not a module name: {name!r} (use -m package.module)")
    import importlib.util
    import sys

    top = name.split(".")[0]
    saved = sys.path[:]
    try:
        sys.path.insert(0, os.getcwd())  # python -m looks in the current directory first
        found = top in sys.modules or importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        found = False
    finally:
        sys.path[:] = saved
    if not found:
        raise UsageError(f"no module named {top!r} (python -m {name} would fail too)")
