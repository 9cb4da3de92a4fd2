"""What bounds the script's training loop, read from its source: its data (the number of iterations follows the
batch size, as in ``for i in range(0, len(X), batch_size)``), or its own count (``while iter_num < max_iters``,
``for it in range(max_iters)``). A loop bounded by its count runs as many iterations whatever the batch size, so
dividing its batch size would divide the data it trains on.

The loop is the innermost one around the line that runs backward (in the user's frames on the stack, innermost
first), passing over the script's own accumulation loop (``for micro_step in range(gradient_accumulation_steps)``).
Names in the loop's header, and the names assigned to them in the same function or at module level, tell whether
the batch size is in it.
"""

from __future__ import annotations

import ast
import functools
import os
import sys
from collections.abc import Sequence
from types import FrameType
from typing import Any

from torchdoctor.agent.hooks.locations import is_user_file, shown_path

MAX_FILE_BYTES = 2_000_000


def _tree(filename: str) -> tuple[ast.Module, str] | None:
    try:
        stat = os.stat(filename)
    except OSError:
        return None
    return _parsed(filename, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=16)
def _parsed(filename: str, mtime_ns: int, size: int) -> tuple[ast.Module, str] | None:
    try:
        with open(filename, encoding="utf-8", errors="replace") as handle:
            source = handle.read(MAX_FILE_BYTES + 1)
    except OSError:
        return None
    if len(source) > MAX_FILE_BYTES:
        return None
    try:
        return ast.parse(source), source
    except SyntaxError:
        return None


def _names(node: ast.AST) -> set[str]:
    """The names and attribute names in ``node``, in lower case (``opt.batchSize`` is ``batchsize``)."""
    found: set[str] = set()
    for child in ast.walk(node):
        if isinstance(child, ast.Name):
            found.add(child.id.lower())
        elif isinstance(child, ast.Attribute):
            found.add(child.attr.lower())
    return found


def _enclosing(tree: ast.AST, line: int) -> list[ast.AST]:
    """The nodes enclosing ``line``, outermost first."""
    path: list[ast.AST] = []
    node: ast.AST | None = tree
    while node is not None:
        path.append(node)
        inner = None
        for child in ast.iter_child_nodes(node):
            start, end = getattr(child, "lineno", None), getattr(child, "end_lineno", None)
            if start is not None and end is not None and start <= line <= end and not isinstance(child, ast.expr):
                inner = child
                break
        node = inner
    return path


def _assigned(scopes: Sequence[ast.AST]) -> dict[str, set[str]]:
    """name -> the names in what is assigned to it, in these scopes (not descending into nested functions)."""
    out: dict[str, set[str]] = {}
    for scope in scopes:
        stack = list(ast.iter_child_nodes(scope))
        while stack:
            node = stack.pop()
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
                continue
            if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)) and node.value is not None:
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    for name in _names(target):
                        out.setdefault(name, set()).update(_names(node.value))
            stack.extend(ast.iter_child_nodes(node))
    return out


def read_loop(filename: str, line: int, batch_names: set[str], accumulation_names: set[str]) -> dict[str, Any] | None:
    """The loop around ``line`` in ``filename``: its header, where it is, and what bounds it ("data", "count" or
    "unknown"); None when no loop encloses the line."""
    parsed = _tree(filename)
    if parsed is None:
        return None
    batch_names = {n.lower() for n in batch_names}
    accumulation_names = {n.lower() for n in accumulation_names}
    tree, source = parsed
    path = _enclosing(tree, line)
    loops = [n for n in path if isinstance(n, (ast.For, ast.AsyncFor, ast.While))]
    for loop in reversed(loops):
        header = loop.iter if isinstance(loop, (ast.For, ast.AsyncFor)) else loop.test
        names = _names(header)
        if names & accumulation_names:
            continue  # the script's own accumulation loop: the training loop is around it
        scopes = [tree] + [n for n in path if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        assigned = _assigned(scopes)
        reached = set(names)
        for _ in range(3):  # names assigned from names assigned from ... the header's names
            reached |= {m for n in list(reached) for m in assigned.get(n, ())}
        text = (ast.get_source_segment(source, loop) or "").splitlines()[0].strip().rstrip(":")
        where = f"{shown_path(filename)}:{loop.lineno}"
        if reached & batch_names:
            bound = "data"
        elif isinstance(loop, ast.While) or "range" in names:
            bound = "count"
        else:
            bound = "unknown"
        return {"header": text, "where": where, "bound": bound}
    return None


def training_loop(batch_names: set[str], accumulation_names: set[str]) -> dict[str, Any] | None:
    """The loop around the innermost user frame on the stack that is inside one."""
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        if is_user_file(filename):
            found = read_loop(filename, frame.f_lineno, batch_names, accumulation_names)
            if found is not None:
                return found
        frame = frame.f_back
    return None
