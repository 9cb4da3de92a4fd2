"""From one attempt's events to what the supervisor decides on and reports (pure; no torch)."""

from __future__ import annotations

import re
import signal
from typing import Any

from torchdoctor.config import BATCH_OPTIONS
from torchdoctor.events import Outcome
from torchdoctor.plan import Plan
from torchdoctor.sizes import format_bytes
from torchdoctor.supervisor.recovery_types import Failure, FailureKind, LoaderInfo, RecoveryOptions
from torchdoctor.supervisor.state import RunState

_KEY_VALUE = re.compile(r"^--([A-Za-z_][A-Za-z0-9_-]*)=(\d+)$")


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def command_line_batch(script_args: tuple[str, ...], wanted: str | None) -> tuple[str, int] | None:
    """A ``--batch_size=12`` style override on the script's command line (nanoGPT's configurator)."""
    names = {wanted.lstrip("-").replace("-", "_").lower()} if wanted else set(BATCH_OPTIONS)
    for arg in script_args:
        match = _KEY_VALUE.match(arg)
        if match and match.group(1).replace("-", "_").lower() in names:
            return f"--{match.group(1)}", int(match.group(2))
    return None


def replace_option(args: list[str], option: str, value: int) -> list[str]:
    """``args`` without ``option`` (``--opt V`` or ``--opt=V``), then ``--opt=value`` at the end."""
    kept: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg == option:
            skip = True  # "--batch-size 256": drop the value too
            continue
        if arg.startswith(option + "="):
            continue
        kept.append(arg)
    return kept + [f"{option}={value}"]


def script_args_for(script_args: tuple[str, ...], plan: Plan) -> list[str]:
    """The script's arguments for an attempt: unchanged, or with the batch-size option divided (and, when the
    script accumulates gradients itself, its accumulation option multiplied)."""
    args = list(script_args)
    if plan.micro_batches <= 1:
        return args
    if plan.batch_arg and plan.batch_arg_size:
        args = replace_option(args, plan.batch_arg, plan.batch_arg_size // plan.micro_batches)
    if plan.accumulation == "script" and plan.accumulation_arg and plan.accumulation_size:
        args = replace_option(args, plan.accumulation_arg, plan.accumulation_size * plan.micro_batches)
    return args


def describe_failure(state: RunState, returncode: int, script_args: tuple[str, ...],
                     options: RecoveryOptions, oom_killer: bool | None = None) -> Failure:
    finished = state.finished
    loaders = tuple(LoaderInfo(b.index, b.batch_size, b.training) for b in state.batch_sources.values()
                    if b.source == "dataloader")
    argument = next(((b.detail, b.batch_size) for b in state.batch_sources.values()
                     if b.source == "argument" and b.batch_size), None)
    argument = command_line_batch(script_args, options.batch_arg) or argument
    workers = any(b.workers for b in state.batch_sources.values())
    phase = state.ooms[-1].phase if state.ooms else None
    oom = {k: v for k, v in state.ooms[-1].to_dict().items() if k not in ("v", "kind")} if state.ooms else None
    training = ({k: v for k, v in state.training.to_dict().items() if k not in ("v", "kind", "t")}
                if state.training else None)
    step_peak = state.step_peaks.get(oom.get("device", "")) if oom else None
    peak = step_peak.to_dict() if step_peak else None

    def failure(kind: FailureKind, message: str = "") -> Failure:
        return Failure(kind, phase=phase, message=message, loaders=loaders, argument=argument, has_workers=workers,
                       oom_killer=oom_killer, oom=oom, training=training, step_peak=peak)

    if state.resume is not None and state.resume.restart:
        return failure("resume-abandoned", message=state.resume.message)
    if returncode == 0:
        return failure("success")
    if returncode == -signal.SIGKILL and (finished is None or finished.exception is None):
        return failure("host-kill", message="killed by SIGKILL (the kernel's OOM killer?)")
    if finished is not None and finished.oom:
        return failure("oom", message=finished.message or "")
    if finished is not None and "does not require grad" in (finished.message or ""):
        return failure("eval-needs-grad", message=finished.message or "")
    return failure("other", message=(finished.message or "") if finished else "")


def attempt_record(plan: Plan, state: RunState, returncode: int, failure: Failure, seconds: float,
                   oom_killer: bool | None = None, failing: RunState | None = None) -> dict[str, Any]:
    """One attempt as the report lists it. ``failing``: under torch's launcher, the rank where the failure began
    when it is not the first (its OOM is the attempt's; the loop's figures stay the first rank's)."""
    failing = failing if failing is not None else state
    oom = failing.ooms[-1] if failing.ooms else None
    rank = failing.started.rank if failing is not state and failing.started is not None else None
    record: dict[str, Any] = {
        "attempt": plan.attempt,
        "plan": plan.to_dict(),
        "returncode": returncode,
        "outcome": failure.kind,
        "steps": state.steps,
        "seconds": round(seconds, 3),
        "oom": oom.to_dict() if oom else None,
        "training": ({k: v for k, v in state.training.to_dict().items() if k not in ("v", "kind", "t")}
                     if state.training else None),
    }
    if failure.kind == "oom" and oom is not None:
        where = f"at step {oom.step}" + (f" ({oom.phase})" if oom.phase else "")
        asked = f": tried to allocate {format_bytes(oom.requested_bytes)}" if oom.requested_bytes else ""
        free = ""
        if oom.capacity_bytes is not None and oom.in_use_bytes is not None:
            free = (f" with {format_bytes(oom.capacity_bytes - oom.in_use_bytes)} free of "
                    f"{format_bytes(oom.capacity_bytes)}")
        record["summary"] = f"ran out of memory {where}{asked}{free}" + (f" on rank {rank}" if rank is not None
                                                                          else "")
    elif failure.kind == "host-kill":
        held = state.peaks.get(("host", "process_rss"))
        workers = state.peaks.get(("host", "workers_rss"))
        memory = ""
        # under torch's launcher the supervisor's child is the launcher, and its child processes are the ranks
        launched = state.started is not None and state.started.world_size is not None
        who, children = ("rank 0 (or the launcher)", "every rank and its DataLoader workers") if launched else (
            "the script", "DataLoader workers")
        if held is not None:
            memory = f"; {who} held up to {format_bytes(held.bytes)} resident"
            if workers is not None:
                memory += f" and its child processes ({children}) {format_bytes(workers.bytes)}"
        cause = {True: "the kernel's OOM killer fired: host memory ran out",
                 False: "no OOM-killer kill was recorded: another process may have sent it",
                 None: "host memory?"}[oom_killer]
        on = f" on rank {rank}" if rank is not None else ""
        record["summary"] = f"was killed by SIGKILL{on} after {state.steps} steps ({cause}){memory}"
        record["oom_killer"] = oom_killer
    elif failure.kind == "resume-abandoned":
        record["summary"] = f"could not resume ({failure.message})"
    elif returncode < 0:
        record["summary"] = (f"crashed with {signal_name(-returncode)} after {state.steps} steps "
                             f"(see faulthandler.log in the run directory)")
    elif failure.kind == "success":
        record["summary"] = f"finished: {state.steps} optimizer steps"
    else:
        record["summary"] = f"failed ({failure.message[:120] or f'exit {returncode}'})"
    return record


def suggestions(breakdown: dict[str, int] | None, held: list[dict[str, Any]] | None = None) -> list[str]:
    """Concrete ways out when no remedy is left, largest estimated saving first."""
    if not breakdown:
        return ["measure where the memory goes: torchdoctor run --accounting exact"]
    loose = [t for t in held or [] if t.get("phase") == "other"
             and t.get("category") in ("activations_other", "inputs_data")]
    data = sum(t["bytes"] for t in loose)
    act = breakdown.get("activations_saved", 0) + breakdown.get("activations_other", 0)
    opt = breakdown.get("optimizer_state", 0)
    temporaries = breakdown.get("optimizer_temporaries", 0)
    grads = breakdown.get("gradients", 0)
    params = breakdown.get("parameters", 0)
    ideas = [
        (data, f"keep data off the device: {len(loose)} tensor(s) made outside training forwards hold "
               f"{format_bytes(data)} (the largest {'×'.join(str(n) for n in loose[0]['shape'])} "
               f"{loose[0]['dtype']}); move each batch instead") if loose else (0, ""),
        (act // 2, f"halve the batch or checkpoint activations (torch.utils.checkpoint): activations and other "
                   f"tensors held {format_bytes(act)}; about {format_bytes(act // 2)} saved"),
        (opt // 2, f"keep optimizer state in bfloat16 or use an optimizer with less state: it held "
                   f"{format_bytes(opt)}; about {format_bytes(opt // 2)} saved"),
        (temporaries, f"step the optimizer with foreach=False (or fused=True on a GPU): its step's temporaries "
                      f"held {format_bytes(temporaries)}") if temporaries else (0, ""),
        (params // 2, f"bfloat16 weights: parameters held {format_bytes(params)}; about {format_bytes(params // 2)} "
                      f"saved"),
        (grads, f"free gradients early (zero_grad(set_to_none=True) before the forward): they held "
                f"{format_bytes(grads)}"),
    ]
    return [text for saving, text in sorted(ideas, key=lambda i: -i[0]) if saving > 0]


def exit_status(returncode: int, finished_exception: str | None,
                signalled: int | None) -> tuple[int, Outcome, str | None]:
    """Map the child's Popen return code to (torchdoctor's exit code, outcome, signal name).

    A script's own exit code is returned unchanged; death by signal N becomes 128 + N, as shells show it.
    """
    if returncode < 0:
        signum = -returncode
        name = signal_name(signum)
        outcome: Outcome = "interrupted" if signum in (signal.SIGINT, signal.SIGTERM) or signalled else "killed"
        return 128 + signum, outcome, name
    if returncode == 0:
        return 0, "success", None
    if finished_exception == "KeyboardInterrupt" or signalled:
        return returncode, "interrupted", None
    return returncode, "failed", None
