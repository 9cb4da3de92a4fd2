"""Run the doctor over the labelled corpus and score it: precision and recall per finding id.

    python tests/doctor_corpus/evaluate.py        # prints the per-class table (Markdown) for docs/doctor.md

Each script runs under ``torchdoctor run`` in its own process; the labels come from ``manifest.json`` only (the
detectors never see file names or comments). A finding counts as a true positive when the manifest lists its id
for that script, a false positive otherwise; a listed id with no finding is a false negative.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent


@dataclass
class Outcome:
    script: str
    expected: set[str]
    found: set[str]
    returncode: int
    stderr: str = ""


@dataclass
class Score:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    scripts: list[str] = field(default_factory=list)

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0


def manifest() -> dict[str, list[str]]:
    return json.loads((HERE / "manifest.json").read_text())


def run_one(script: str, expected: list[str], workdir: Path) -> Outcome:
    run_dir = workdir / script.removesuffix(".py")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("TORCHDOCTOR_EVENTS", None)
    result = subprocess.run([sys.executable, "-m", "torchdoctor", "run", "-q", "--run-dir", str(run_dir),
                             str(HERE / script)], cwd=workdir, capture_output=True, text=True, timeout=300, env=env)
    try:
        findings = json.loads((run_dir / "report.json").read_text())["findings"]
    except (OSError, ValueError, KeyError):
        findings = []
    return Outcome(script, set(expected), {f["id"] for f in findings}, result.returncode, result.stderr[-2000:])


def run_corpus(workers: int = 2) -> list[Outcome]:
    labels = manifest()
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda item: run_one(item[0], item[1], Path(tmp)), sorted(labels.items())))


def score(outcomes: list[Outcome]) -> tuple[Score, dict[str, Score]]:
    total = Score()
    per_id: dict[str, Score] = {}
    for outcome in outcomes:
        for check_id in outcome.expected | outcome.found:
            s = per_id.setdefault(check_id, Score())
            if check_id in outcome.expected and check_id in outcome.found:
                s.tp += 1
                total.tp += 1
            elif check_id in outcome.found:
                s.fp += 1
                total.fp += 1
            else:
                s.fn += 1
                total.fn += 1
            s.scripts.append(outcome.script)
    return total, per_id


def table(outcomes: list[Outcome]) -> str:
    total, per_id = score(outcomes)
    clean = sum(1 for o in outcomes if not o.expected)
    lines = [f"{len(outcomes)} scripts, {clean} clean, {len(outcomes) - clean} with bugs.", "",
             "| id | expected | found correctly | false alarms | missed | precision | recall |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for check_id, s in sorted(per_id.items()):
        lines.append(f"| {check_id} | {s.tp + s.fn} | {s.tp} | {s.fp} | {s.fn} | {s.precision:.2f} | {s.recall:.2f} |")
    lines.append(f"| all | {total.tp + total.fn} | {total.tp} | {total.fp} | {total.fn} | {total.precision:.2f} | "
                 f"{total.recall:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    results = run_corpus()
    for outcome in results:
        if outcome.returncode != 0 or outcome.expected != outcome.found:
            print(f"{outcome.script}: expected {sorted(outcome.expected)}, found {sorted(outcome.found)}, "
                  f"exit {outcome.returncode}", file=sys.stderr)
    print(table(results))
