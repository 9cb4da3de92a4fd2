"""``torchdoctor run --nproc-per-node N ...``: torchrun's own options, checked and handed to torch's launcher.

torchdoctor never launches ranks itself: any of these options makes the child ``python -c <launch>`` (which runs
``torch.distributed.run``, torchrun itself, in ``agent/launch.py``) with the options as given, and each rank runs
the agent's bootstrap (``--no-python python -c <boot>``), as the single-process child does. Pure: no torch, no click.
The names, spellings and value types are torchrun's (torch 2.13, ``torch.distributed.run.get_args_parser``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torchdoctor.errors import UsageError

START_METHODS = ("spawn", "fork", "forkserver")
NPROC_WORDS = ("auto", "cpu", "gpu", "xpu")
# Read by torch's launcher: restarts (--max-restarts) with the shared rendezvous TCPStore failed 5 of 6 times on
# torch 2.13, 4 of 4 without it (DESIGN.md, "Several GPUs"). Set unless the user's environment sets it.
LAUNCHER_ENV = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}


def _whole(minimum: int, maximum: int | None = None) -> Callable[[str, str], None]:
    def check(option: str, value: str) -> None:
        try:
            number = int(value)
        except ValueError:
            raise UsageError(f"{option} takes a whole number, not {value!r}") from None
        if number < minimum or (maximum is not None and number > maximum):
            bounds = f"from {minimum} to {maximum}" if maximum is not None else f"of {minimum} or more"
            raise UsageError(f"{option} takes a number {bounds}, not {value}")
    return check


def _seconds(option: str, value: str) -> None:
    try:
        seconds = float(value)
    except ValueError:
        raise UsageError(f"{option} takes a number of seconds, not {value!r}") from None
    if not seconds > 0 or seconds == float("inf"):
        raise UsageError(f"{option} takes a positive number of seconds, not {value}")


def _nproc(option: str, value: str) -> None:
    if value in NPROC_WORDS:
        return
    if not value.isdigit() or int(value) < 1:
        raise UsageError(f"{option} takes a number of processes of 1 or more, or one of {', '.join(NPROC_WORDS)}; "
                         f"not {value!r}")


def _nnodes(option: str, value: str) -> None:
    parts = value.split(":")
    if len(parts) > 2 or not all(p.isdigit() and int(p) >= 1 for p in parts) or int(parts[0]) > int(parts[-1]):
        raise UsageError(f"{option} takes a number of nodes (2) or a range MIN:MAX (1:4), not {value!r}")


def _choice(choices: tuple[str, ...]) -> Callable[[str, str], None]:
    def check(option: str, value: str) -> None:
        if value not in choices:
            raise UsageError(f"{option} takes one of {', '.join(choices)}, not {value!r}")
    return check


@dataclass(frozen=True)
class TorchrunOption:
    names: tuple[str, ...]  # torchrun's spellings, the first one canonical (--nproc-per-node, --nproc_per_node)
    help: str
    flag: bool = False  # takes no value
    check: Callable[[str, str], None] | None = None  # raises UsageError for a value torchrun would refuse
    shown: bool = True  # listed in `torchdoctor run --help` (all are in docs/distributed.md)
    metavar: str = "VALUE"

    @property
    def long_name(self) -> str:
        return next(name for name in self.names if name.startswith("--"))

    @property
    def key(self) -> str:
        """The option's parameter name on the command (never one of torchdoctor's own)."""
        return option_key((self.long_name,))


def _both(name: str) -> tuple[str, ...]:
    return (name, "--" + name[2:].replace("-", "_")) if "-" in name[2:] else (name,)


OPTIONS: tuple[TorchrunOption, ...] = (
    TorchrunOption(_both("--nproc-per-node"), "torchrun: processes (ranks) on this machine; runs the script "
                   "under torch's launcher, an agent in every rank (all of torchrun's options pass through: "
                   "docs/distributed.md)", check=_nproc, metavar="N"),
    TorchrunOption(("--nnodes",), "torchrun: machines, N or MIN:MAX", check=_nnodes, metavar="N"),
    TorchrunOption(_both("--node-rank"), "torchrun: this machine's rank", check=_whole(0), metavar="RANK"),
    TorchrunOption(("--standalone",), "torchrun: one machine, a local rendezvous on a free port", flag=True),
    TorchrunOption(_both("--rdzv-backend"), "torchrun: rendezvous backend (c10d, static, etcd, ...)",
                   metavar="NAME"),
    TorchrunOption(_both("--rdzv-endpoint"), "torchrun: rendezvous HOST[:PORT]", metavar="HOST:PORT"),
    TorchrunOption(_both("--rdzv-id"), "torchrun: the job's rendezvous id", metavar="ID"),
    TorchrunOption(_both("--rdzv-conf"), "torchrun: rendezvous settings KEY=VALUE,...", shown=False),
    TorchrunOption(_both("--max-restarts"), "torchrun: restarts of the whole group after a rank fails",
                   check=_whole(0), metavar="N"),
    TorchrunOption(_both("--master-addr"), "torchrun: rank 0's address (static rendezvous)", metavar="HOST"),
    TorchrunOption(_both("--master-port"), "torchrun: rank 0's port (static rendezvous)",
                   check=_whole(0, 65535), metavar="PORT"),
    TorchrunOption(_both("--monitor-interval"), "", check=_seconds, shown=False),
    TorchrunOption(_both("--start-method"), "", check=_choice(START_METHODS), shown=False),
    TorchrunOption(_both("--event-log-handler"), "", shown=False),
    TorchrunOption(("--role",), "", shown=False),
    TorchrunOption(_both("--log-dir"), "", shown=False),
    TorchrunOption(("-r", "--redirects"), "", shown=False),
    TorchrunOption(("-t", "--tee"), "", shown=False),
    TorchrunOption(_both("--local-ranks-filter"), "", shown=False),
    TorchrunOption(_both("--duplicate-stdout-filters"), "", shown=False),
    TorchrunOption(_both("--duplicate-stderr-filters"), "", shown=False),
    TorchrunOption(_both("--local-addr"), "", shown=False),
    TorchrunOption(_both("--logs-specs"), "", shown=False),
    TorchrunOption(_both("--numa-binding"), "", shown=False),
    TorchrunOption(_both("--signals-to-handle"), "", shown=False),
    TorchrunOption(_both("--shutdown-timeout"), "", check=_whole(0), shown=False),
    TorchrunOption(_both("--virtual-local-rank"), "", flag=True, shown=False),
)

# torchrun options about how the script is started: torchdoctor starts every rank itself, under its agent.
REFUSED: dict[tuple[str, ...], str] = {
    ("--module",): "torchrun's --module is torchdoctor's own -m: torchdoctor run --nproc-per-node N -m MODULE",
    _both("--no-python"): "--no-python cannot be used: torchdoctor runs Python scripts and modules under its agent, "
                          "in every rank",
    _both("--run-path"): "--run-path cannot be used: torchdoctor already runs the script as python would "
                         "(__main__, sys.argv, sys.path)",
}


def launcher_args(given: dict[str, object]) -> tuple[str, ...]:
    """torchrun's command-line options from the values given (keyed by ``TorchrunOption.key``; None or False:
    not given), each checked first; a refused option raises UsageError with why."""
    for names, why in REFUSED.items():
        if given.get(option_key(names)):
            raise UsageError(why)
    args: list[str] = []
    for option in OPTIONS:
        value = given.get(option.key)
        if value is None or value is False:
            continue
        name = option.long_name
        if option.flag:
            args.append(name)
            continue
        text = str(value)
        if option.check is not None:
            option.check(name, text)
        args += [name, text]
    return tuple(args)


def option_key(names: tuple[str, ...]) -> str:
    """The parameter name of a torchrun option on the command (``torchrun_nproc_per_node``)."""
    return "torchrun_" + names[0].lstrip("-").replace("-", "_")


def launch_command(python: str, launch_boot: str, options: tuple[str, ...], rank_command: list[str]) -> list[str]:
    """The child's command line: torch's launcher with ``options``, each rank running ``rank_command`` (the
    agent's ``python -c <boot> [-m] TARGET ARGS``) as it is, without torchrun's ``python -u`` in front."""
    return [python, "-c", launch_boot, *options, "--no-python", *rank_command]
