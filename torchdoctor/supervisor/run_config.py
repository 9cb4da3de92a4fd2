"""What ``torchdoctor run`` and ``torchdoctor ci`` ask the supervisor for: the parent's own settings (the child's travel
as ``torchdoctor.config.AgentSettings``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from torchdoctor.supervisor.recovery_planner import RecoveryOptions


@dataclass(frozen=True)
class RunConfig:
    target: str
    is_module: bool = False
    script_args: tuple[str, ...] = ()
    run_dir: str | None = None
    quiet: bool = False
    live: bool | None = None  # None: on when stdout is a terminal
    log_interval: float = 10.0
    accounting: str = "sampled"
    sample_every: int = 50
    memory_budget: int | None = None
    host_memory_limit: int | None = None
    atomic_save: bool = True
    checkpoint_every: int = 0
    doctor: bool = True
    fail_on: str | None = None  # "error" | "warning": exit 1 when findings at that level exist
    max_steps: int = 0  # end the script after this many optimizer steps (torchdoctor ci)
    tensorboard_dir: str | None = None  # also write the memory figures and OOMs there (SummaryWriter)
    wandb: bool = False  # also log them to Weights & Biases (wandb's own settings: WANDB_MODE, WANDB_PROJECT, ...)
    recovery: RecoveryOptions = field(default_factory=RecoveryOptions)
    relaunch: str = "auto"  # "auto" | "fork": relaunches fork from a torch-preloaded zygote; "fresh": new processes
    extra_env: dict[str, str] = field(default_factory=dict)
    stall_timeout: float | None = None  # end the run after this many seconds without progress (outcome "stalled")
    stop_grace: float = 10.0  # seconds a signalled script has to end before the next, stronger signal
    estimate: bool = False  # torchdoctor estimate: the agent counts on fake tensors
    child_log: str | None = None  # the script's stdout and stderr go to this file (not the terminal)
    # torchrun's options (--nproc-per-node 2 ...): the script runs under torch's launcher, an agent in every rank
    launcher_args: tuple[str, ...] = ()
