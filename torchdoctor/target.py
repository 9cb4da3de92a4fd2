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
    try:
        compile(source, path, "exec", dont_inherit=True)
    except SyntaxError as exc:
        where = f"{path}:{exc.lineno}" if exc.lineno else path
        kind = "not a Python script" if not path.endswith((".py", ".pyw")) else "syntax error"
        raise UsageError(f"{kind} in {where}: {exc.msg}") from None
    except ValueError as exc:  # e.g. source code cannot contain null bytes
        raise UsageError(f"{path} is not a Python script ({exc})") from None


def check_module_name(name: str) -> None:
    if not _MODULE_NAME.match(name):
        raise UsageError(f"not a module name: {name!r} (use -m package.module)")
