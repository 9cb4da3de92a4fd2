"""The folders are the architecture, and their import rules hold (DESIGN.md's import boundaries, docs/architecture.md).

- The top level (shared contract and entry points), ``supervisor/`` (the parent process) and ``reporters/`` never
  import torch: they run in a process that must stay light and must work where torch does not import. Checked by
  importing every one of their modules with torch blocked.
- ``agent/`` (inside the training process) never imports ``supervisor/``, ``reporters/``, the CLI, rich or click;
  ``supervisor/`` and ``reporters/`` never import ``agent/``. Checked on every import statement, function-level ones
  included, so a lazy import cannot cross a boundary either.
"""

import ast
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

PACKAGE = Path(REPO) / "torchdoctor"


def _modules(folder: Path, recursive: bool = True) -> list[str]:
    files = folder.rglob("*.py") if recursive else folder.glob("*.py")
    names = []
    for path in sorted(files):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__main__":
            continue  # runs the CLI when imported
        if parts[-1] == "__init__":
            parts.pop()
        names.append(".".join(parts))
    return names


TORCH_FREE = (_modules(PACKAGE, recursive=False) + _modules(PACKAGE / "cli") + _modules(PACKAGE / "supervisor")
              + _modules(PACKAGE / "reporters"))

BLOCK_TORCH = r"""
import importlib, sys

class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError(f"torch is blocked here (imported while loading {sys._getframe(1).f_globals.get('__name__')})")
        return None

sys.meta_path.insert(0, NoTorch())
for name in sys.argv[1:]:
    importlib.import_module(name)
assert "torch" not in sys.modules
print("ok")
"""


def test_the_top_level_the_supervisor_side_and_the_reporters_import_with_torch_blocked():
    assert {"torchdoctor.cli", "torchdoctor.supervisor.attempt_loop", "torchdoctor.reporters.html"} <= set(TORCH_FREE)
    result = subprocess.run([sys.executable, "-c", BLOCK_TORCH, *TORCH_FREE], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def _imports(path: Path) -> set[str]:
    """Every module an import statement of this file names (``from X import y`` gives X and X.y)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


FORBIDDEN = {
    "agent": ("torchdoctor.supervisor", "torchdoctor.reporters", "torchdoctor.cli", "rich", "click"),
    "supervisor": ("torchdoctor.agent", "torch"),
    "reporters": ("torchdoctor.agent", "torch"),
}


def test_no_folder_imports_across_its_boundary():
    crossings = []
    for folder, forbidden in FORBIDDEN.items():
        for path in sorted((PACKAGE / folder).rglob("*.py")):
            for name in _imports(path):
                if any(name == f or name.startswith(f + ".") for f in forbidden):
                    crossings.append(f"{path.relative_to(REPO)} imports {name}")
    assert crossings == []
    assert len(list((PACKAGE / "agent").rglob("*.py"))) > 30  # the walk saw the agent's subfolders


def test_a_boundary_crossing_is_seen(tmp_path):
    sample = tmp_path / "m.py"
    sample.write_text("def f():\n    from torchdoctor.supervisor.state import RunState\n    import rich.console\n")
    assert {"torchdoctor.supervisor.state", "rich.console"} <= _imports(sample)
