"""``torchdoctor estimate``: peak memory per batch size and the largest batch under a budget, from the script's
first optimizer steps run on fake tensors (``agent/estimate/``), one process per batch size (the document and the
search: ``torchdoctor/estimating.py``).

Batch sizes are changed on the script's command line, through its batch-size option (as the recovery does): named
with ``--batch-arg`` or found among the arguments given, or in the script's argparse parser during its first run.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from typing import Any

from torchdoctor.errors import TorchDoctorError, UsageError
from torchdoctor.estimating import BatchRuns, EstimateRequest, document, figures_from
from torchdoctor.events import Estimated
from torchdoctor.gpus import ENV_ESTIMATE_GPU
from torchdoctor.supervisor.child import Launcher
from torchdoctor.supervisor.failures import replace_option


def _one_run(request: EstimateRequest, script_args: list[str], run_dir: str, launcher: Launcher) -> dict[str, Any]:
    """The script under the agent's estimate session, its output kept in the run directory."""
    from torchdoctor.supervisor.attempt_loop import Supervisor
    from torchdoctor.supervisor.recovery_planner import RecoveryOptions
    from torchdoctor.supervisor.run_config import RunConfig

    config = RunConfig(target=request.script, is_module=request.is_module, script_args=tuple(script_args),
                       run_dir=run_dir, quiet=True, live=False, accounting="off", doctor=False, atomic_save=False,
                       max_steps=request.steps, recovery=RecoveryOptions(max_retries=0), estimate=True,
                       child_log=os.path.join(run_dir, "output.log"),
                       extra_env={ENV_ESTIMATE_GPU: request.gpu.name} if request.gpu is not None else {})
    with open(os.devnull, "w", encoding="utf-8") as quiet:
        supervisor = Supervisor(config, stdout=quiet, stderr=quiet, launcher=launcher)
        supervisor.run()
    estimated = next((e for e in supervisor.state.estimates if isinstance(e, Estimated)), None)
    exited = supervisor.state.exited
    failed = exited is None or exited.exit_code != 0
    if estimated is None or not estimated.steps_done or (failed and estimated.steps_done < request.steps):
        what = "ended" if estimated is not None and not failed else "did not run"
        raise TorchDoctorError(f"the script {what} on fake tensors before its optimizer step "
                               f"{(estimated.steps_done if estimated else 0) + 1}: {_last_line(run_dir)}")
    return figures_from(estimated, request)


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
        return _one_run(self.request, args, run_dir, self.launcher)


def run_estimate(request: EstimateRequest) -> dict[str, Any]:
    """The estimate document (``schema: torchdoctor-estimate``, docs/estimate.md)."""
    began = time.monotonic()
    root = tempfile.mkdtemp(prefix="torchdoctor-estimate-")
    runs = None
    try:
        runs = _Runs(request, root)
        runs.at(None)
        return document(request, runs, request.script, [request.script, *request.script_args], began)
    finally:
        if runs is not None:
            runs.launcher.close()
        shutil.rmtree(root, ignore_errors=True)
