"""The parent process of ``torchdoctor run``: launches the agent, folds its events, shows and records the run.

The supervisor never imports torch and never touches CUDA; what it knows comes from the event stream
(written by the child into the run directory) and from outside probes (psutil, NVML).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from typing import IO, Any

from torchdoctor.checks import at_or_above
from torchdoctor.config import AgentSettings
from torchdoctor.devices import cgroup_memory_peak, host_info, oom_kill_count, open_nvml
from torchdoctor.errors import TorchDoctorError
from torchdoctor.events import ProcessExited, ProcessSample, Stall
from torchdoctor.files import write_json_atomic
from torchdoctor.plan import Plan
from torchdoctor.supervisor.child import (
    BOOT,
    LAUNCH,
    PACKAGE_ROOT,
    Launcher,
    RankProcess,
    in_terminal_foreground,
    probe_process,
)
from torchdoctor.supervisor.event_tail import EventTail
from torchdoctor.supervisor.failures import attempt_record, describe_failure, exit_status, script_args_for, signal_name
from torchdoctor.supervisor.ranks import RankStreams, distributed_summary, failing_returncode, failing_state
from torchdoctor.supervisor.recovery_planner import next_plan
from torchdoctor.supervisor.report import build_report
from torchdoctor.supervisor.resume_source import resume_source
from torchdoctor.supervisor.run_config import RunConfig
from torchdoctor.supervisor.rundir import claim_run_dir
from torchdoctor.supervisor.state import RunState
from torchdoctor.supervisor.stopping import StallWatch, StopLadder, read_stacks
from torchdoctor.supervisor.target import check_module, check_script
from torchdoctor.supervisor.terminal import PtyForwarder, open_pty, resize_pty
from torchdoctor.supervisor.torchrun_options import LAUNCHER_ENV, launch_command
from torchdoctor.supervisor.zygote import ZygoteProcess

# --relaunch auto: a torch-preloaded zygote is started once attempt 1 has run this long (a run that ends sooner pays
# nothing for it), at once under --memory-budget, or at the first failure that is relaunched; relaunches fork from it.
ZYGOTE_AFTER_S = 10.0
STALLED_EXIT = 124  # --stall-timeout ended the run (as GNU timeout exits)


class Supervisor:
    def __init__(self, config: RunConfig, stdout: IO[str] | None = None, stderr: IO[str] | None = None,
                 launcher: Launcher | None = None) -> None:
        self.config = config
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr
        self.state = RunState()
        self.run_dir = ""
        self._signalled: int | None = None
        self._resume_blocked: str | None = None  # why a resume was abandoned: later attempts do not try again
        self._child: subprocess.Popen[bytes] | ZygoteProcess | None = None
        self._owns_launcher = launcher is None  # one given (torchdoctor estimate's, with its zygote) is not closed
        # under torch's launcher every attempt is a fresh launcher process (the zygote forks one script process)
        self._launcher = launcher or Launcher("fresh" if config.launcher_args else config.relaunch)
        self._ranks = RankStreams("")  # the other ranks' event streams, under torch's launcher (in the run dir)
        self._stop = StopLadder(config.stop_grace)
        self._cgroup_before = cgroup_memory_peak()  # a peak above this was reached during the run
        self._stall = StallWatch(config.stall_timeout, time.monotonic())
        self._env_for_zygote: dict[str, str] = {}
        self._monitors: list[Any] = []  # monitoring tools fed every event (TensorBoard, W&B)

    # -- set-up ---------------------------------------------------------------------------------------
    def _prepare(self) -> tuple[list[str], dict[str, str]]:
        cfg = self.config
        if cfg.is_module:
            check_module(cfg.target)
        else:
            check_script(cfg.target)
        claimed = claim_run_dir(cfg.target, cfg.run_dir)  # events.jsonl made, atomically: the directory is ours
        self.run_dir = claimed.path
        self._events_path = os.path.abspath(claimed.events)
        self._ranks.run_dir = self.run_dir
        try:
            if cfg.tensorboard_dir or cfg.wandb:
                from torchdoctor.reporters.monitors import open_monitors

                self._monitors = open_monitors(cfg.tensorboard_dir, cfg.wandb, run_dir=self.run_dir,
                                               target=cfg.target)
            return self._settings(Plan(batch_arg=cfg.recovery.batch_arg))
        except BaseException as exc:
            claimed.release()  # nothing ran: a rerun may use the directory again
            if isinstance(exc, OSError):
                raise TorchDoctorError(f"cannot write the run directory {self.run_dir}: "
                                       f"{exc.strerror or exc}") from None
            raise

    def _settings(self, plan: Plan) -> tuple[list[str], dict[str, str]]:
        """The child's command line and environment for the attempt that follows ``plan``."""
        cfg = self.config
        plan_path = os.path.abspath(os.path.join(self.run_dir, f"plan-{plan.attempt}.json"))
        plan.write(plan_path)
        settings = AgentSettings(
            events_path=self._events_path, accounting=cfg.accounting, sample_every=cfg.sample_every,
            fault_log=os.path.abspath(os.path.join(self.run_dir, "faulthandler.log")), attempt=plan.attempt,
            plan_path=plan_path, memory_budget=cfg.memory_budget, host_memory_limit=cfg.host_memory_limit,
            atomic_save=cfg.atomic_save, checkpoint_every=cfg.checkpoint_every, doctor=cfg.doctor,
            max_steps=cfg.max_steps, estimate=cfg.estimate,
            checkpoint_dir=os.path.abspath(os.path.join(self.run_dir, "checkpoints")) if cfg.checkpoint_every else None,
        )
        env = {**os.environ, **settings.to_env(), **cfg.extra_env}
        command = [sys.executable, "-c", BOOT.format(root=PACKAGE_ROOT)]
        command += (["-m"] if cfg.is_module else []) + [cfg.target, *script_args_for(cfg.script_args, plan)]
        if cfg.launcher_args:  # torch's launcher starts the ranks, each one this command
            command = launch_command(sys.executable, LAUNCH.format(root=PACKAGE_ROOT), cfg.launcher_args, command)
            env = {**LAUNCHER_ENV, **env}
        return command, env

    def _use_live(self) -> bool:
        if self.config.quiet:
            return False
        if self.config.live is not None:
            return self.config.live
        return self.stdout.isatty() and os.environ.get("TERM", "") != "dumb"

    # -- the run -------------------------------------------------------------------------------------
    def run(self) -> int:
        command, env = self._prepare()
        nvml, nvml_why = open_nvml()
        gpus = nvml.info() if nvml else []
        host = host_info()
        capacity: dict[str, int | None] = {"host": host.get("memory_total_bytes")}
        for gpu in gpus:
            capacity[f"gpu{gpu.index}"] = gpu.total_bytes
            capacity[f"cuda:{gpu.index}"] = gpu.total_bytes
        tail = EventTail(self._events_path)
        live = self._use_live()
        plan = Plan(batch_arg=self.config.recovery.batch_arg)
        options = self.config.recovery
        attempts: list[dict[str, Any]] = []
        answered = None
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        # A memory budget is a run that expects OOMs: the zygote imports while attempt 1 runs, so the first
        # relaunch forks at once (--relaunch auto otherwise waits 10 s, so short runs pay nothing for it).
        eager = self.config.relaunch == "fork" or (self.config.relaunch == "auto" and self.config.memory_budget)
        if eager and options.max_retries > 0:
            self._launcher.start_zygote(env)
        try:
            for sig in previous:
                signal.signal(sig, self._on_signal)
            while True:
                self.state = RunState()
                self._ranks.reset()
                began = time.time()
                kills_before = oom_kill_count()
                self._env_for_zygote = env
                returncode = self._attempt(command, env, tail, nvml, capacity, live)
                kills_after = oom_kill_count()
                oom_killer = None if kills_before is None or kills_after is None else kills_after > kills_before
                failing, ended = self.state, returncode
                if self.config.launcher_args:  # read from the rank where the failure began
                    failing = failing_state(self.state, self._ranks.states)
                    ended = failing_returncode(self.state, self._ranks.states, returncode)
                failure = describe_failure(failing, ended, self.config.script_args, options, oom_killer)
                record = attempt_record(plan, self.state, returncode, failure, time.time() - began,
                                        oom_killer=oom_killer, failing=failing)
                record["launched"] = self._launcher.launched
                resume = failing.resume if failing.resume is not None else self.state.resume
                if resume is not None:
                    record["resume"] = resume.to_dict()
                    if resume.status == "abandoned":
                        self._resume_blocked = resume.message
                attempts.append(record)
                if (failure.kind == "success" or self._signalled or self._stop.stopping
                        or (failure.kind == "other" and answered is None)):
                    break
                decision = next_plan(plan, failure, options, previous=answered)
                record["decision"] = decision.reason
                if decision.passed_over:
                    record["passed_over"] = list(decision.passed_over)
                if decision.plan is None:
                    break
                record["next_remedy"] = decision.remedy
                ranks = self.state.started.world_size if self.state.started is not None else None
                resume_from, where = resume_source(self.run_dir, self.config.checkpoint_every, self._resume_blocked,
                                                   world_size=ranks)
                self._say(f"attempt {plan.attempt} {record['summary']}; attempt {decision.plan.attempt}: "
                          f"{decision.reason} ({where})")
                if failure.kind in ("oom", "host-kill"):
                    answered = failure  # the failure this remedy answers (undone if the script fails with it)
                if self.config.relaunch != "fresh":
                    self._launcher.start_zygote(env)
                plan = replace(decision.plan, resume_from=resume_from)
                if "remedies" in decision.changes:
                    options = replace(options, remedies=decision.changes["remedies"])  # type: ignore[arg-type]
                try:
                    command, env = self._settings(plan)
                except OSError as exc:  # a full disk: no plan for the next attempt, so there is none
                    self._say(f"cannot write the next attempt's plan in {self.run_dir} ({exc.strerror or exc}); "
                              f"stopping here")
                    break
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if nvml is not None:
                nvml.close()
            if self._owns_launcher:
                self._launcher.close()
        return self._finish(returncode, host, gpus, nvml_why, live, attempts)

    def _say(self, message: str) -> None:
        stream = self.stdout if self._use_live() else self.stderr
        stream.write(f"[torchdoctor] {message}\n")
        stream.flush()

    def _attempt(self, command: list[str], env: dict[str, str], tail: EventTail, nvml: Any,
                 capacity: dict[str, int | None], live: bool) -> int:
        """Run the child once, showing it live; returns its Popen return code."""
        view: Any = None
        forwarder = None
        winch = signal.getsignal(signal.SIGWINCH)
        try:
            if live:
                from rich.console import Console

                from torchdoctor.reporters.live import LiveView

                console = Console(file=self.stdout)
                master, slave = open_pty(console.width, console.height)
                self._child = self._launcher.launch(command, env, stdout=slave, stderr=slave)
                os.close(slave)
                view = LiveView(console, self.config.target, capacity)
                view.__enter__()
                forwarder = view.forwarder = PtyForwarder(master, view.print_output)
                signal.signal(signal.SIGWINCH, lambda *_: self._resize(master))
            else:
                from torchdoctor.reporters.live import PlainProgress

                if self.config.child_log:
                    with open(self.config.child_log, "ab") as log:
                        self._child = self._launcher.launch(command, env, stdout=log.fileno(),
                                                            stderr=log.fileno())
                else:
                    self._child = self._launcher.launch(command, env)
                if not self.config.quiet:
                    view = PlainProgress(self.stderr, self.config.log_interval)
            self._watch(tail, nvml, view)
        finally:
            if view is not None and live:
                if forwarder is not None:
                    forwarder.join(5.0)
                view.__exit__(None, None, None)
            signal.signal(signal.SIGWINCH, winch)
        returncode = self._child.wait()
        for event in tail.read():
            self._apply(event)
        self._ranks.read()
        peak = cgroup_memory_peak()  # the kernel's high-water mark: what 1 s samples miss before an OOM kill
        if peak is not None and self._cgroup_before is not None and peak > self._cgroup_before:
            self._apply(ProcessSample(rss_bytes=None, children_rss_bytes=None, cgroup_peak_bytes=peak))
        return returncode

    # -- processes ---------------------------------------------------------------------------------------
    def _resize(self, master: int) -> None:
        try:
            size = os.get_terminal_size(self.stdout.fileno())
        except (OSError, ValueError):
            return
        resize_pty(master, size.columns, size.lines)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._signalled = signum
        child = self._child
        if child is None or child.poll() is not None:
            return
        # Ctrl-C in our terminal reached the child already (same process group); a second one escalates at once
        delivered = signum == signal.SIGINT and in_terminal_foreground()
        self._stop.start(f"signal {signal_name(signum)}", child, time.monotonic(), first=signum,
                         already_delivered=delivered)

    def _watch_progress(self, child: Any) -> None:
        """Stalls noticed (with the stacks), ``--stall-timeout`` applied, a stopping child signalled up the ladder."""
        now = time.monotonic()
        self._stall.progress(self.state.steps, self.state.where, now)
        if self._stall.due_notice(now):
            self._stall.noticed = True
            seconds = self._stall.stalled_for(now)
            self._apply(Stall(since=time.time() - seconds, seconds=round(seconds, 1), where=self.state.where,
                              stacks=read_stacks(self._main_process(child),
                                                 os.path.join(self.run_dir, "faulthandler.log"),
                                                 self.state.stacks_signal)))
            self._say(f"stalled for {seconds:.0f} s at {self.state.where or 'an unknown place'} (no optimizer step, "
                      f"the main thread in one place); its Python stacks are in the report")
        if self._stall.timed_out(now) and not self._stop.stopping:
            self._say(f"no progress for {self._stall.timeout:g} s (--stall-timeout): stopping the script")
            self._stop.start("stall-timeout", child, now)
        before = len(self._stop.sent)
        self._stop.tick(child, now)
        if len(self._stop.sent) > before:
            self._say(f"the script is still running {self._stop.grace:g} s after {self._stop.sent[-2]}: "
                      f"sending {self._stop.sent[-1]}")

    def _watch(self, tail: EventTail, nvml: Any, view: Any) -> None:
        import psutil

        child = self._child
        assert child is not None
        try:
            proc: Any = psutil.Process(child.pid)
        except psutil.Error:
            proc = None
        last_probe = 0.0
        began = time.monotonic()
        while True:
            done = child.poll() is not None
            for event in tail.read():
                self._apply(event)
            self._ranks.read()
            now = time.monotonic()
            if (self.config.relaunch == "auto" and self._launcher.zygote is None and now - began >= ZYGOTE_AFTER_S
                    and self.config.recovery.max_retries > 0):
                self._launcher.start_zygote(self._env_for_zygote)
            if not done:
                self._watch_progress(child)
            if not done and now - last_probe >= 1.0:
                last_probe = now
                self._apply(probe_process(proc, nvml))
            if view is not None:
                view.update(self.state)
            if done:
                return
            time.sleep(0.1)

    def _main_process(self, child: Any) -> Any:
        """The process that writes the run's own events: the child, or under torch's launcher its first rank."""
        started = self.state.started
        return RankProcess(started.pid) if self.config.launcher_args and started is not None else child

    def _apply(self, event: Any) -> None:
        """Every event goes to the run's state, then to the monitoring tools."""
        self.state.apply(event)
        for monitor in self._monitors:
            monitor.event(event)

    # -- the end -------------------------------------------------------------------------------------
    def _finish(self, returncode: int, host: dict[str, Any], gpus: list[Any], nvml_why: str, live: bool,
                attempts: list[dict[str, Any]]) -> int:
        finished = self.state.finished
        exit_code, outcome, signame = exit_status(
            returncode, finished.exception if finished else None, self._signalled)
        if self._stop.reason == "stall-timeout":
            exit_code, outcome = STALLED_EXIT, "stalled"
        self._apply(ProcessExited(returncode=returncode, exit_code=exit_code, outcome=outcome, signal=signame,
                                  stop=self._stop.to_dict()))
        started = self.state.started
        environment = {
            "host": host,
            "torch": {"version": started.torch_version if started else None,
                      "cuda_version": started.cuda_version if started else None,
                      "cuda_devices": started.cuda_devices if started else None},
            "gpus": {"gpus": [g.to_dict() for g in gpus], "explanation": nvml_why if not gpus else "nvml"},
        }
        distributed = distributed_summary(self.state, self._ranks.states,
                                          stopped=bool(self._signalled or self._stop.stopping))
        report = build_report(self.state, run_dir=self.run_dir, environment=environment, attempts=attempts,
                              memory_budget=self.config.memory_budget, distributed=distributed,
                              ranks=self._ranks.states)
        report_path = os.path.join(self.run_dir, "report.json")
        try:
            write_json_atomic(report_path, report)
        except OSError as exc:  # a full disk: the report is still shown, and rebuilt from the events later
            self.stderr.write(f"[torchdoctor] could not write {report_path} ({exc.strerror or exc}); "
                              f"`torchdoctor report {self.run_dir}` rebuilds it from events.jsonl\n")
        for monitor in self._monitors:
            monitor.close(report)
        self._show_final(report, live)
        if exit_code == 0 and self.config.fail_on:
            failing = [f for f in report["findings"] if at_or_above(f["severity"], self.config.fail_on)]
            if failing:
                ids = ", ".join(sorted({f["id"] for f in failing}))
                self.stderr.write(f"[torchdoctor] exit 1: {len(failing)} finding(s) at or above "
                                  f"{self.config.fail_on} ({ids}; --fail-on {self.config.fail_on})\n")
                return 1
        return exit_code

    def _show_final(self, report: dict[str, Any], live: bool) -> None:
        from rich.console import Console

        if self.config.quiet:
            from torchdoctor.reporters.summary_line import summary_line

            self.stderr.write(summary_line(report) + "\n")
            return
        from torchdoctor.reporters.console import render_report

        render_report(report, Console(file=self.stdout if live else self.stderr))
