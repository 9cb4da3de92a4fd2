"""``torchdoctor estimate``: peak memory per batch size and the largest batch under a budget, from the script's
first optimizer steps run on fake tensors (``agent/estimate/``), one process per batch size (the document and the
search: ``torchdoctor/estimating.py``).

Batch sizes are changed on the script's command line, through its batch-size option (as the recovery does): named
with ``--batch-arg`` or found among the arguments given, or in the script's argparse parser during its first run.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from dataclasses import replace
from typing import Any

from torchdoctor.errors import TorchDoctorError, UsageError
from torchdoctor.estimating import BatchRuns, EstimateRequest, document, figures_from
from torchdoctor.events import Estimated
from torchdoctor.gpus import ENV_ESTIMATE_GPU
from torchdoctor.supervisor.child import Launcher
from torchdoctor.supervisor.failures import replace_option


class FakeFailed(TorchDoctorError):
    """The script failed on fake tensors (an op fake tensors cannot run, a value they cannot give): it may still
    be measured on real tensors (through the batch-size option found in its argparse before it failed)."""

    def __init__(self, message: str, batch_option: str | None) -> None:
        super().__init__(message)
        self.batch_option = batch_option


def _supervise(request: EstimateRequest, script_args: list[str], run_dir: str, launcher: Launcher,
               fake: bool) -> Any:
    from torchdoctor.supervisor.attempt_loop import Supervisor
    from torchdoctor.supervisor.recovery_planner import RecoveryOptions
    from torchdoctor.supervisor.run_config import RunConfig

    config = RunConfig(target=request.script, is_module=request.is_module, script_args=tuple(script_args),
                       run_dir=run_dir, quiet=True, live=False, accounting="off" if fake else "exact", doctor=False,
                       atomic_save=False, max_steps=request.steps, recovery=RecoveryOptions(max_retries=0),
                       estimate=fake, child_log=os.path.join(run_dir, "output.log"),
                       extra_env={ENV_ESTIMATE_GPU: request.gpu.name} if request.gpu is not None and fake else {})
    with open(os.devnull, "w", encoding="utf-8") as quiet:
        supervisor = Supervisor(config, stdout=quiet, stderr=quiet, launcher=launcher)
        supervisor.run()
    return supervisor


def _one_run(request: EstimateRequest, script_args: list[str], run_dir: str, launcher: Launcher) -> dict[str, Any]:
    """The script under the agent's estimate session, its output kept in the run directory."""
    supervisor = _supervise(request, script_args, run_dir, launcher, fake=True)
    estimated = next((e for e in supervisor.state.estimates if isinstance(e, Estimated)), None)
    exited = supervisor.state.exited
    failed = exited is None or exited.exit_code != 0
    if estimated is None or not estimated.steps_done or (failed and estimated.steps_done < request.steps):
        step = (estimated.steps_done if estimated else 0) + 1
        if estimated is not None and not failed:
            raise TorchDoctorError(f"the script ended before its optimizer step {step}: {_last_line(run_dir)}")
        raise FakeFailed(f"the script did not run on fake tensors before its optimizer step {step}: "
                         f"{_failure(run_dir)}", estimated.batch_option if estimated is not None else None)
    return figures_from(estimated, request)


def _real_run(request: EstimateRequest, script_args: list[str], run_dir: str, launcher: Launcher,
              batch: int | None) -> dict[str, Any]:
    """The script's first steps on real tensors, the CPU allocator's figures (as ``torchdoctor ci`` takes them):
    what is left when fake tensors cannot run it."""
    from torchdoctor.supervisor.report import load_report

    supervisor = _supervise(request, script_args, run_dir, launcher, fake=False)
    report = load_report(supervisor.run_dir)
    peak = next((p for p in report.get("peaks") or [] if p.get("kind") == "tensor_bytes"), None)
    if peak is None or not report.get("steps"):
        raise TorchDoctorError(f"the script did not reach its optimizer step 1 on real tensors either: "
                               f"{_failure(run_dir)}")
    return {"batch_size": batch, "peak_bytes": peak["bytes"], "peak_phase": peak.get("phase") or "other",
            "by_phase": peak.get("phase_peaks") or {}, "by_kind": peak.get("breakdown") or {},
            "steps_counted": min(report["steps"], request.steps), "steps_wanted": request.steps, "stand_ins": 0,
            "device": peak.get("device", "cpu"), "batch_option": None, "layers": [], "forward_growth_bytes": None,
            "kernels_unmeasured": "", "measured": "real tensors", "figures": peak.get("label", "")}


def _failure(run_dir: str) -> str:
    """The script's error and where it was raised in the user's code (the innermost frame of the traceback that is
    neither torch's, a library's nor torchdoctor's)."""
    try:
        with open(os.path.join(run_dir, "output.log"), encoding="utf-8", errors="replace") as handle:
            text = handle.read()
    except OSError:
        text = ""
    frames = [m for m in re.finditer(r'^\s*File "([^"]+)", line (\d+), in (\S+)', text, re.M)
              if not any(part in m.group(1) for part in ("site-packages", "dist-packages", "/torchdoctor/", "<"))]
    where = f" (at {os.path.basename(frames[-1].group(1))}:{frames[-1].group(2)} in {frames[-1].group(3)})" \
        if frames else ""
    return _last_line(run_dir) + where


def _last_line(run_dir: str) -> str:
    try:
        with open(os.path.join(run_dir, "output.log"), encoding="utf-8", errors="replace") as handle:
            lines = [line.strip() for line in handle if line.strip() and not line.startswith("[torchdoctor]")]
    except OSError:
        lines = []
    return lines[-1][:300] if lines else "it ended before its first optimizer step"


class _Runs(BatchRuns):
    """Fake runs of the script, each a process forked from one torch-preloaded zygote (a run costs tens of
    milliseconds to start, not an import)."""

    def __init__(self, request: EstimateRequest, root: str) -> None:
        super().__init__()
        self.request, self.root = request, root
        self.launcher = Launcher("fork", fork_first=True)
        self.launcher.start_zygote(dict(os.environ))
        self.option = request.batch_option()
        self.fake_failed = ""  # why fake tensors could not run the script: the runs are real from then on

    def run(self, batch: int | None) -> dict[str, Any]:
        args = list(self.request.script_args)
        own = self.done.get(None)
        if batch is not None:
            if self.option is None and own is not None:
                self.option = own.get("batch_option")  # found in the script's own argparse
            if self.option is None:
                raise UsageError("changing the batch size needs the script's batch-size option: name it with "
                                 "--batch-arg (e.g. --batch-arg --batch-size)")
            args = replace_option(args, self.option, batch)
        run_dir = os.path.join(self.root, f"batch-{batch if batch is not None else 'own'}")
        if not self.fake_failed:
            try:
                return _one_run(self.request, args, run_dir, self.launcher)
            except FakeFailed as exc:  # the first run only: a real search would allocate ever larger batches
                if self.request.gpu is not None or not self.request.fallback or self.done:
                    raise
                self.fake_failed = str(exc)
                self.option = self.option or exc.batch_option
                if batch is None and self.request.batch_sizes:  # not asked for: not run for real
                    return {"batch_size": None, "peak_bytes": 0, "peak_phase": "other", "by_phase": {},
                            "by_kind": {}, "steps_counted": 0, "steps_wanted": self.request.steps, "stand_ins": 0,
                            "device": "cpu", "batch_option": exc.batch_option, "layers": [],
                            "forward_growth_bytes": None, "kernels_unmeasured": "", "kernel_failures": [],
                            "measured": "not run"}
                run_dir += "-real"
        return _real_run(self.request, args, run_dir, self.launcher, batch)


def run_estimate(request: EstimateRequest) -> dict[str, Any]:
    """The estimate document (``schema: torchdoctor-estimate``, docs/estimate.md)."""
    began = time.monotonic()
    root = tempfile.mkdtemp(prefix="torchdoctor-estimate-")
    runs = None
    try:
        runs = _Runs(request, root)
        runs.at(None)
        if runs.fake_failed:  # real runs at the batch sizes asked for, no search (it would allocate growing batches)
            request = replace(request, budget=None)
        result = document(request, runs, request.script, [request.script, *request.script_args], began)
        if runs.fake_failed:
            result["fallback"] = {"why": runs.fake_failed, "measured": "real tensors: the CPU allocator's figures "
                                  "over the first steps at each batch size (as torchdoctor ci takes them)",
                                  "largest_batch": "not searched: real runs would allocate ever larger batches"}
            result["figures"] = "measured on real tensors (fake tensors could not run the script)"
        return result
    finally:
        if runs is not None:
            runs.launcher.close()
        shutil.rmtree(root, ignore_errors=True)
