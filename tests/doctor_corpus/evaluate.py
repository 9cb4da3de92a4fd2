"""Run the doctor over the labelled corpus and score it: precision and recall per finding id.

    python tests/doctor_corpus/evaluate.py        # prints the per-check and per-shape tables (Markdown) for docs/doctor.md
    python tests/doctor_corpus/evaluate.py --cli  # the same, each script under `torchdoctor run`
    python tests/doctor_corpus/evaluate.py td104_manual_slices.py ...  # only these scripts

Each script runs in its own process under the agent (``torchdoctor.agent.bootstrap``, as ``torchdoctor run``'s
child does). By default the processes are forked from a server that has imported torch once (a multiprocessing
forkserver with torch preloaded, one fresh process per script): ``import torch`` is most of a small script's time,
and the corpus runs in a third of the time. ``--cli`` runs each script under ``torchdoctor run`` instead (the
supervisor, the report). The labels come from ``manifest.json`` only (the detectors never see file names or
comments). A finding counts as a true positive when the manifest lists its id for that script, a false positive
otherwise; a listed id with no finding is a false negative.

``shapes.json`` labels each script with the shapes of its training loop (one or more of ``SHAPES``); the second
table scores the findings of the scripts of each shape.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
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


# The loop shapes of shapes.json: how the script gets its batches, loops, reads its model's output, is organised.
SHAPES = {
    "dataloader": "batches from a DataLoader, a pass per epoch",
    "manual-batches": "batches sliced by hand or made by a collate function called in the loop",
    "step-loop": "itertools.cycle, `while step < max_steps` or a count of iterations",
    "structured-output": "the model returns (logits, loss), a dict or a dataclass",
    "trainer-class": "training inside a Trainer class's train_step/training_loop methods",
    "two-models": "two models and two optimizers",
    "late": "the bug (or the trap) begins late: after a warm-up or an epoch, on unfreezing, on a resume branch",
}


def manifest() -> dict[str, list[str]]:
    return json.loads((HERE / "manifest.json").read_text())


def shapes() -> dict[str, list[str]]:
    return json.loads((HERE / "shapes.json").read_text())


def _child(script: str, run_dir: str) -> tuple[int, str]:
    """Runs in the forked process: the agent's entry point on ``script``, output to files, events to run_dir."""
    for name in [k for k in os.environ if k.startswith("TORCHDOCTOR_")]:
        del os.environ[name]
    os.environ["TORCHDOCTOR_EVENTS"] = os.path.join(run_dir, "events.jsonl")
    os.chdir(run_dir)
    for fd, name in ((1, "stdout"), (2, "stderr")):
        out = os.open(os.path.join(run_dir, name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(out, fd)
        os.close(out)
    from torchdoctor.agent.bootstrap import main

    try:
        main([script])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    sys.stdout.flush()
    sys.stderr.flush()
    with open(os.path.join(run_dir, "stderr"), encoding="utf-8", errors="replace") as handle:
        return code, handle.read()[-2000:]


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


def run_corpus(workers: int = 2, cli: bool = False, scripts: list[str] | None = None) -> list[Outcome]:
    labels = manifest()
    items = sorted((name, ids) for name, ids in labels.items() if scripts is None or name in scripts)
    with tempfile.TemporaryDirectory() as tmp:
        if cli:
            with ThreadPoolExecutor(workers) as pool:
                return list(pool.map(lambda item: run_one(item[0], item[1], Path(tmp)), items))
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["torch", "torchdoctor.agent.bootstrap", "torchdoctor.agent.session"])
        run_dirs = [Path(tmp) / name.removesuffix(".py") for name, _ in items]
        for run_dir in run_dirs:
            run_dir.mkdir()
        with ProcessPoolExecutor(workers, mp_context=context, max_tasks_per_child=1) as pool:
            futures = [pool.submit(_child, str(HERE / name), str(run_dir)) for (name, _), run_dir in zip(items, run_dirs)]
            results = [future.result(timeout=300) for future in futures]
        return [Outcome(name, set(ids), _findings(run_dir / "events.jsonl"), returncode, stderr)
                for (name, ids), run_dir, (returncode, stderr) in zip(items, run_dirs, results)]


def _findings(events: Path) -> set[str]:
    found = set()
    for line in events.read_text().splitlines():
        event = json.loads(line)
        if event.get("kind") == "finding":
            found.add(event["id"])
    return found


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


def shape_scores(outcomes: list[Outcome]) -> dict[str, tuple[int, int, Score]]:
    """shape -> (scripts, scripts with bugs, the score of their findings)."""
    labels = shapes()
    out: dict[str, tuple[int, int, Score]] = {}
    for shape in SHAPES:
        mine = [o for o in outcomes if shape in labels.get(o.script, ())]
        if mine:
            out[shape] = (len(mine), sum(1 for o in mine if o.expected), score(mine)[0])
    return out


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
    lines += ["", "| shape | scripts | with bugs | found correctly | false alarms | missed | precision | recall |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for shape, (count, buggy, s) in shape_scores(outcomes).items():
        lines.append(f"| {shape} | {count} | {buggy} | {s.tp} | {s.fp} | {s.fn} | {s.precision:.2f} | "
                     f"{s.recall:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    wanted = [arg for arg in sys.argv[1:] if not arg.startswith("--")]
    results = run_corpus(cli="--cli" in sys.argv[1:], scripts=wanted or None)
    for outcome in results:
        if outcome.returncode != 0 or outcome.expected != outcome.found:
            print(f"{outcome.script}: expected {sorted(outcome.expected)}, found {sorted(outcome.found)}, "
                  f"exit {outcome.returncode}", file=sys.stderr)
    print(table(results))
