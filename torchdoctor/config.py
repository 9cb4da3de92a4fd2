"""Settings that travel from the supervisor down to the agent, as ``TORCHDOCTOR_*`` environment variables."""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass, replace

from torchdoctor.errors import UsageError

ACCOUNTING_MODES = ("sampled", "exact", "off")
DEFAULT_SAMPLE_EVERY = 50
DEFAULT_FIRST_STEPS = 3

ENV_EVENTS = "TORCHDOCTOR_EVENTS"
ENV_ACCOUNTING = "TORCHDOCTOR_ACCOUNTING"
ENV_SAMPLE_EVERY = "TORCHDOCTOR_SAMPLE_EVERY"
ENV_FIRST_STEPS = "TORCHDOCTOR_FIRST_STEPS"
ENV_FAULT_LOG = "TORCHDOCTOR_FAULT_LOG"
ENV_ATTEMPT = "TORCHDOCTOR_ATTEMPT"
ENV_PLAN = "TORCHDOCTOR_PLAN"
ENV_MEMORY_BUDGET = "TORCHDOCTOR_MEMORY_BUDGET"
ENV_HOST_LIMIT = "TORCHDOCTOR_HOST_MEMORY_LIMIT"
ENV_ATOMIC_SAVE = "TORCHDOCTOR_ATOMIC_SAVE"
ENV_CHECKPOINT_DIR = "TORCHDOCTOR_CHECKPOINT_DIR"
ENV_CHECKPOINT_EVERY = "TORCHDOCTOR_CHECKPOINT_EVERY"
ENV_DOCTOR = "TORCHDOCTOR_DOCTOR"
ENV_MAX_STEPS = "TORCHDOCTOR_MAX_STEPS"
ENV_ESTIMATE = "TORCHDOCTOR_ESTIMATE"

# Sent by the supervisor to a stalled child whose heartbeat says it is registered: the agent's faulthandler writes every
# thread's stack to faulthandler.log. A real-time signal, not SIGUSR1: SLURM, Lightning and others use SIGUSR1 for
# their own ends (requeue on a time limit). None where there are no real-time signals: no stacks there.
STACKS_SIGNAL: int | None = signal.SIGRTMIN + 7 if hasattr(signal, "SIGRTMIN") else None

# The option names a script's batch size goes by (argparse dests, also read from its command line by the supervisor).
BATCH_OPTIONS = ("batch_size", "train_batch_size", "per_device_train_batch_size", "micro_batch_size", "bs",
                 "batchsize")

@dataclass(frozen=True)
class AgentSettings:
    """What the agent inside the child needs to know.

    ``accounting`` chooses how CPU tensor memory is measured: ``exact`` counts every allocation of every
    step; ``sampled`` (default) counts exactly on the first ``first_steps`` steps and every ``sample_every``-th
    step, which keeps the overhead near zero; ``off`` measures only what is free (RSS, CUDA counters).
    """

    events_path: str | None = None
    accounting: str = "sampled"
    sample_every: int = DEFAULT_SAMPLE_EVERY
    first_steps: int = DEFAULT_FIRST_STEPS
    fault_log: str | None = None
    attempt: int = 1
    plan_path: str | None = None
    memory_budget: int | None = None  # bytes; the device behaves as if it had this much memory
    host_memory_limit: int | None = None  # bytes of heap (RLIMIT_DATA): real CPU allocator failures beyond it
    atomic_save: bool = True  # the script's torch.save(obj, path) writes atomically
    checkpoint_dir: str | None = None  # torchdoctor's own checkpoints of the script's state (--checkpoint-every)
    checkpoint_every: int = 0
    doctor: bool = True  # the training-loop checks (findings)
    max_steps: int = 0  # end the run after this many optimizer steps (0: run to the end)
    estimate: bool = False  # torchdoctor estimate: run on fake tensors, count, stop after max_steps

    def __post_init__(self) -> None:
        if self.accounting not in ACCOUNTING_MODES:
            raise UsageError(f"--accounting must be one of {', '.join(ACCOUNTING_MODES)}, not {self.accounting!r}")
        if self.sample_every < 1:
            raise UsageError(f"--sample-every must be at least 1, not {self.sample_every}")
        if self.first_steps < 0:
            raise UsageError(f"first steps must be at least 0, not {self.first_steps}")

    def to_env(self) -> dict[str, str]:
        env = {
            ENV_ACCOUNTING: self.accounting,
            ENV_SAMPLE_EVERY: str(self.sample_every),
            ENV_FIRST_STEPS: str(self.first_steps),
            ENV_ATTEMPT: str(self.attempt),
        }
        if self.events_path:
            env[ENV_EVENTS] = self.events_path
        if self.fault_log:
            env[ENV_FAULT_LOG] = self.fault_log
        if self.plan_path:
            env[ENV_PLAN] = self.plan_path
        if self.memory_budget:
            env[ENV_MEMORY_BUDGET] = str(self.memory_budget)
        if self.host_memory_limit:
            env[ENV_HOST_LIMIT] = str(self.host_memory_limit)
        env[ENV_ATOMIC_SAVE] = "1" if self.atomic_save else "0"
        env[ENV_DOCTOR] = "1" if self.doctor else "0"
        if self.max_steps:
            env[ENV_MAX_STEPS] = str(self.max_steps)
        if self.estimate:
            env[ENV_ESTIMATE] = "1"
        if self.checkpoint_dir and self.checkpoint_every:
            env[ENV_CHECKPOINT_DIR] = self.checkpoint_dir
            env[ENV_CHECKPOINT_EVERY] = str(self.checkpoint_every)
        return env

    def for_rank(self, rank: Rank | None) -> AgentSettings:
        """Each rank of a run under torch's launcher writes its own files: the first process of each machine
        (LOCAL_RANK 0) the run's own, every other one ``events-rank{RANK}.jsonl`` and ``faulthandler-rank{RANK}.log``
        beside them."""
        if rank is None or rank.local_rank == 0:
            return self
        return replace(self, events_path=rank_path(self.events_path, rank.rank),
                       fault_log=rank_path(self.fault_log, rank.rank))

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> AgentSettings:
        env = os.environ if environ is None else environ

        def _int(name: str, default: int) -> int:
            try:
                return int(env.get(name, default))
            except ValueError:
                raise UsageError(f"{name} must be a whole number, not {env.get(name)!r}") from None

        return cls(
            events_path=env.get(ENV_EVENTS) or None,
            accounting=env.get(ENV_ACCOUNTING, "sampled"),
            sample_every=_int(ENV_SAMPLE_EVERY, DEFAULT_SAMPLE_EVERY),
            first_steps=_int(ENV_FIRST_STEPS, DEFAULT_FIRST_STEPS),
            fault_log=env.get(ENV_FAULT_LOG) or None,
            attempt=_int(ENV_ATTEMPT, 1),
            plan_path=env.get(ENV_PLAN) or None,
            memory_budget=_int(ENV_MEMORY_BUDGET, 0) or None,
            host_memory_limit=_int(ENV_HOST_LIMIT, 0) or None,
            atomic_save=env.get(ENV_ATOMIC_SAVE, "1") != "0",
            checkpoint_dir=env.get(ENV_CHECKPOINT_DIR) or None,
            checkpoint_every=_int(ENV_CHECKPOINT_EVERY, 0),
            doctor=env.get(ENV_DOCTOR, "1") != "0",
            max_steps=_int(ENV_MAX_STEPS, 0),
            estimate=env.get(ENV_ESTIMATE, "0") == "1",
        )


@dataclass(frozen=True)
class Rank:
    """Where a process stands in a run started by torch's launcher (the variables torchrun sets in each worker)."""

    rank: int
    local_rank: int
    world_size: int

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Rank | None:
        """None outside torch's launcher (RANK, LOCAL_RANK or WORLD_SIZE missing, or not numbers)."""
        env = os.environ if environ is None else environ
        try:
            return cls(int(env["RANK"]), int(env["LOCAL_RANK"]), int(env["WORLD_SIZE"]))
        except (KeyError, ValueError):
            return None


def rank_path(path: str | None, rank: int) -> str | None:
    """``run/events.jsonl`` -> ``run/events-rank3.jsonl``: rank 3's own file beside the run's."""
    if path is None:
        return None
    stem, dot, suffix = os.path.basename(path).partition(".")
    return os.path.join(os.path.dirname(path), f"{stem}-rank{rank}{dot}{suffix}")
