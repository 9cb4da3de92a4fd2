"""The live view as a person sees it: ``torchdoctor run`` in a real terminal (tmux), screen read back.

A detached tmux session of a fixed size runs ``python -m torchdoctor run`` on ``tests/scripts/live_slow.py``;
``tmux capture-pane`` shows what is on the screen. While the script runs, the live panel must be at the bottom
(header, a moving step counter, the tensor-bytes and process-RSS rows) with the script's own lines above it;
at the end the live panel is gone, the final report panel is there and report.json agrees with the screen.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from torchdoctor.sizes import format_bytes

REPO = Path(__file__).resolve().parent.parent.parent
SCRIPT = "tests/scripts/live_slow.py"
EPOCHS, STEPS_PER_EPOCH = 8, 20
WIDTH, HEIGHT = 120, 40

pytestmark = [
    pytest.mark.tmux,
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed"),
]


class Tmux:
    """One detached session on a private tmux server (its own socket, no user config)."""

    def __init__(self, tag: str) -> None:
        self.socket = f"torchdoctor-test-{tag}"
        self.session = f"live-{tag}"

    def tmux(self, *args: str, check: bool = True) -> str:
        done = subprocess.run(["tmux", "-L", self.socket, "-f", "/dev/null", *args], capture_output=True,
                              text=True, timeout=10)
        if check and done.returncode != 0:
            raise AssertionError(f"tmux {' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout

    def start(self, command: str, cwd: Path) -> None:
        self.tmux("new-session", "-d", "-s", self.session, "-x", str(WIDTH), "-y", str(HEIGHT), "-c", str(cwd),
                  command)

    def screen(self, history: bool = False) -> str:
        """The visible screen (or it and the scrollback above it, with ``history``), rows as shown, no colours."""
        args = ["capture-pane", "-p", "-t", self.session]
        if history:
            args += ["-S", "-"]
        return self.tmux(*args)

    def kill(self) -> None:
        socket_path = self.tmux("display-message", "-p", "-t", self.session, "#{socket_path}", check=False).strip()
        self.tmux("kill-server", check=False)
        if socket_path and os.path.basename(socket_path) == self.socket and os.path.exists(socket_path):
            os.unlink(socket_path)  # tmux leaves the socket file behind


def _steps(screen: str) -> int | None:
    match = re.search(r"torchdoctor ▸ \S+\s+(\d+) steps\s+·", screen)
    return int(match.group(1)) if match else None


def _row(screen: str, device: str, figure: str) -> list[str] | None:
    """The cells of a live-table row, e.g. ``["cpu", "tensor bytes", "385.1 KiB (step 3)", ...]``."""
    for line in screen.splitlines():
        cells = [c.strip() for c in line.split("│")]
        if len(cells) >= 4 and cells[0] == device and cells[1] == figure:
            return cells
    return None


def _shown(message: str, screen: str) -> str:
    return f"{message}\n--- screen ---\n{screen}\n--------------"


def test_live_view_in_a_real_terminal(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    exit_file = tmp_path / "exit"
    tag = f"{os.getpid()}-{time.monotonic_ns() % 10**9}"
    # COLUMNS/LINES would override the terminal's real size in rich; the environment's own event path must
    # not leak into the run.
    command = (
        f"env -u COLUMNS -u LINES -u TORCHDOCTOR_EVENTS {shlex.quote(sys.executable)} -m torchdoctor run "
        f"--run-dir {shlex.quote(str(run_dir))} {SCRIPT}; "
        f"echo EXIT=$? > {shlex.quote(str(exit_file))}; sleep 30"
    )
    tmux = Tmux(tag)
    tmux.start(command, REPO)
    try:
        # -- while the script runs -------------------------------------------------------------------
        deadline = time.monotonic() + 60  # ~10 s on an idle machine
        seen_steps: list[int] = []
        live_screen = ""
        while time.monotonic() < deadline and not exit_file.exists():
            screen = tmux.screen()
            steps = _steps(screen)
            if steps is not None:
                if not seen_steps or steps != seen_steps[-1]:
                    seen_steps.append(steps)
                if (steps > 0 and "epoch 1 loss" in screen and _row(screen, "cpu", "tensor bytes")
                        and len([s for s in seen_steps if s > 0]) >= 2 and not exit_file.exists()):
                    live_screen = screen
                    break
            time.sleep(0.2)
        if not live_screen:
            pytest.fail(_shown(f"the live panel with a moving step counter never showed while the script ran "
                               f"(step counts seen: {seen_steps})", tmux.screen()))

        lines = live_screen.splitlines()
        assert live_screen.count("torchdoctor ▸") == 1, _shown("the live panel is drawn more than once", live_screen)
        header = next(i for i, line in enumerate(lines) if "torchdoctor ▸" in line)
        assert SCRIPT in lines[header]
        assert re.search(r"\d+\.\d steps/s", lines[header]), _shown("no steps/s rate in the header", live_screen)
        # The step counter moves, upward only.
        nonzero = [s for s in seen_steps if s > 0]
        assert len(nonzero) >= 2 and nonzero == sorted(nonzero), seen_steps
        assert nonzero[-1] < EPOCHS * STEPS_PER_EPOCH
        # The table: column headers, then the tensor-bytes and process-RSS rows with byte figures.
        assert re.search(r"device\s+┃\s+figure\s+┃\s+current\s+┃\s+peak\s+┃", live_screen), \
            _shown("no table header", live_screen)
        tensor = _row(live_screen, "cpu", "tensor bytes")
        rss = _row(live_screen, "host", "process RSS")
        assert tensor is not None and rss is not None, _shown("missing table rows", live_screen)
        size = r"\d+(\.\d)? (B|KiB|MiB|GiB)"
        assert re.fullmatch(size + r" \(step \d+\)", tensor[2]), tensor
        assert re.fullmatch(size, tensor[3]), tensor
        assert re.fullmatch(r"step \d+, (forward|backward|optimizer|other)", tensor[4]), tensor
        assert re.fullmatch(size, rss[2]) and re.fullmatch(size, rss[3]) and re.fullmatch(size, rss[4]), rss
        assert any(line.startswith("last: ") for line in lines[header:]), _shown("no 'last:' line", live_screen)
        # The script's own output is on screen, in order, above the panel.
        first = f"live_slow: {EPOCHS} epochs x {STEPS_PER_EPOCH} steps"
        assert first in lines and lines.index(first) < header, _shown("the script's first line is missing", live_screen)
        epoch_lines = [i for i, line in enumerate(lines) if re.fullmatch(r"epoch \d+ loss \d+\.\d{4}", line)]
        assert epoch_lines and max(epoch_lines) < header, _shown("script output not above the panel", live_screen)
        assert min(epoch_lines) > lines.index(first)
        assert [lines[i].split()[1] for i in epoch_lines] == [str(n) for n in range(1, len(epoch_lines) + 1)]

        # -- the end ---------------------------------------------------------------------------------
        while time.monotonic() < deadline and not exit_file.exists():
            time.sleep(0.2)
        assert exit_file.exists(), _shown("torchdoctor did not finish in time", tmux.screen())
        assert exit_file.read_text().strip() == "EXIT=0"
        final = tmux.screen(history=True)
        assert "torchdoctor ▸" not in final, _shown("the live panel was left behind on screen", final)
        assert "╭─ torchdoctor · " + SCRIPT in final, _shown("no final report panel", final)
        assert f"success (exit 0)  ·  {EPOCHS * STEPS_PER_EPOCH} optimizer steps" in final, \
            _shown("wrong headline", final)
        assert "Peak memory" in final
        final_lines = final.splitlines()
        epochs_shown = [line.split()[1] for line in final_lines if re.fullmatch(r"epoch \d+ loss \d+\.\d{4}", line)]
        assert epochs_shown == [str(n) for n in range(1, EPOCHS + 1)], _shown("script output lost", final)
        assert "live_slow: done" in final_lines
        assert final.index("live_slow: done") < final.index("╭─ torchdoctor · ")

        report = json.loads((run_dir / "report.json").read_text())
        assert report["outcome"] == "success" and report["exit_code"] == 0
        assert report["steps"] == EPOCHS * STEPS_PER_EPOCH
        peaks = {(p["device"], p["kind"]): p for p in report["peaks"]}
        tensor_peak = peaks[("cpu", "tensor_bytes")]
        # The screen shows the report's figures: the final panel, and the live panel's peak (reached at
        # step 2 of this deterministic script, so the live view saw it too).
        assert re.search(r"cpu\s+│ tensor bytes.*│\s+" + re.escape(format_bytes(tensor_peak["bytes"])) + r"\s+│",
                         final), _shown("the tensor peak on screen differs from report.json", final)
        assert tensor[3] == format_bytes(tensor_peak["bytes"]), (tensor, tensor_peak)
        assert "Run directory: " in final
    finally:
        tmux.kill()
