"""Importing any torchdoctor module changes nothing: no torch attribute replaced, no global hook, no warnings
filter, no import hook, no signal handler. Everything is installed by an explicit start (the session, watch(),
the bootstrap's main)."""

import subprocess
import sys

from tests.conftest import REPO

CHECK = r"""
import importlib, pkgutil, signal, sys, warnings
import torch
import torch.nn.modules.module as module_hooks
import torch.optim.optimizer as optimizer_hooks

def state():
    return {
        "filters": list(warnings.filters),
        "meta_path": list(sys.meta_path),
        "attributes": [torch.save, torch.load, torch.autograd.backward, torch.autograd.grad,
                       torch.optim.Optimizer.__init__, torch.optim.Optimizer.zero_grad, torch.nn.Module.__call__,
                       torch.nn.Module.zero_grad, torch.nn.Module.train, torch.utils.data.DataLoader.__iter__],
        "forward_hooks": (len(module_hooks._global_forward_pre_hooks), len(module_hooks._global_forward_hooks)),
        "step_hooks": (len(optimizer_hooks._global_optimizer_pre_hooks),
                       len(optimizer_hooks._global_optimizer_post_hooks)),
        "signals": [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)],
        "excepthook": sys.excepthook,
        "dispatch_modes": len(torch.utils._python_dispatch._get_current_dispatch_mode_stack()),
    }

before = state()
import torchdoctor
names = []
for info in pkgutil.walk_packages(torchdoctor.__path__, "torchdoctor."):
    if info.name.endswith("__main__"):
        continue
    importlib.import_module(info.name)
    names.append(info.name)
after = state()
changed = [key for key in before if before[key] != after[key]]
assert not changed, {key: (before[key], after[key]) for key in changed}
assert len(names) > 80, len(names)
print("ok", len(names))
"""


def test_importing_every_module_installs_nothing():
    result = subprocess.run([sys.executable, "-c", CHECK], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.startswith("ok"), (result.stdout + result.stderr)[-3000:]
