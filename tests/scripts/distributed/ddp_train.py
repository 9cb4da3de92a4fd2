"""A tiny DDP training on gloo (CPU): a small nn.Linear model, a DistributedSampler over made-up data.

Run under torchrun (it reads RANK, WORLD_SIZE, MASTER_ADDR/PORT from the environment).
``--kill-rank R``: rank R sends itself SIGKILL after ``--kill-at`` steps (no Python exception at all).
``--extra-mib-rank R``: rank R holds an extra tensor of ``--extra-mib`` MiB while it trains (one rank's peak above
the others'; under ``--memory-budget``, the rank that runs out of memory first).
"""

import argparse
import os
import signal
import time

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=4)
parser.add_argument("--batch-size", type=int, default=8)
parser.add_argument("--hidden", type=int, default=32)
parser.add_argument("--kill-rank", type=int, default=None)
parser.add_argument("--kill-at", type=int, default=2)
parser.add_argument("--extra-mib-rank", type=int, default=None)
parser.add_argument("--extra-mib", type=int, default=16)
args = parser.parse_args()

dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
data = TensorDataset(torch.randn(args.steps * args.batch_size * dist.get_world_size(), 16),
                     torch.randn(args.steps * args.batch_size * dist.get_world_size(), 1))
loader = DataLoader(data, batch_size=args.batch_size, sampler=DistributedSampler(data, shuffle=False))
model = DistributedDataParallel(nn.Sequential(nn.Linear(16, args.hidden), nn.ReLU(), nn.Linear(args.hidden, 1)))
opt = torch.optim.SGD(model.parameters(), lr=0.01)
extra = torch.ones(args.extra_mib << 18) if rank == args.extra_mib_rank else None  # float32: 4 bytes each
for step, (x, y) in enumerate(loader, start=1):
    opt.zero_grad()
    nn.functional.mse_loss(model(x), y).backward()
    opt.step()
    if rank == args.kill_rank and step == args.kill_at:
        time.sleep(0.5)  # the agent writes its events from a background thread: let the last step's go out
        os.kill(os.getpid(), signal.SIGKILL)
dist.barrier()
dist.destroy_process_group()
print(f"rank {rank} done {step} steps")
