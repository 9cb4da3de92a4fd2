"""A tiny DDP training on gloo (CPU): a small nn.Linear model, a DistributedSampler over made-up data.

Run under torchrun (it reads RANK, WORLD_SIZE, MASTER_ADDR/PORT from the environment).
``--kill-rank R``: rank R sends itself SIGKILL after ``--kill-at`` steps (no Python exception at all); with
``--kill-attempt A`` only in torchdoctor's attempt A (``TORCHDOCTOR_ATTEMPT``), so a relaunch runs through.
``--extra-mib-rank R``: rank R holds an extra tensor of ``--extra-mib`` MiB while it trains (one rank's peak above
the others'; under ``--memory-budget``, the rank that runs out of memory first).
``--epochs E``: passes over the data (the sampler's ``set_epoch`` each time, ``--shuffle`` to shuffle);
``--dropout P``: a dropout layer (each rank's own RNG draws its masks); ``--momentum M``: SGD's (optimizer state).
``--save-params PREFIX``: each rank saves its final parameters to ``PREFIX-rank{R}.pt`` (what the tests compare).
Doctor findings: ``--no-zero-grad`` (every rank: gradients never reset, TD101), ``--keep-graph-rank R`` (rank R alone
keeps every step's loss with its graph, TD109).
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
parser.add_argument("--epochs", type=int, default=1)
parser.add_argument("--shuffle", action="store_true")
parser.add_argument("--dropout", type=float, default=0.0)
parser.add_argument("--momentum", type=float, default=0.0)
parser.add_argument("--batch-size", type=int, default=8)
parser.add_argument("--hidden", type=int, default=32)
parser.add_argument("--kill-rank", type=int, default=None)
parser.add_argument("--kill-at", type=int, default=2)
parser.add_argument("--kill-attempt", default=None)
parser.add_argument("--extra-mib-rank", type=int, default=None)
parser.add_argument("--extra-mib", type=int, default=16)
parser.add_argument("--save-params", default=None)
parser.add_argument("--no-zero-grad", action="store_true")
parser.add_argument("--keep-graph-rank", type=int, default=None)
args = parser.parse_args()

dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
data = TensorDataset(torch.randn(args.steps * args.batch_size * dist.get_world_size(), 16),
                     torch.randn(args.steps * args.batch_size * dist.get_world_size(), 1))
torch.manual_seed(rank)  # each rank's own dropout masks
sampler = DistributedSampler(data, shuffle=args.shuffle)
loader = DataLoader(data, batch_size=args.batch_size, sampler=sampler)
layers = [nn.Linear(16, args.hidden), nn.ReLU()] + ([nn.Dropout(args.dropout)] if args.dropout else [])
model = DistributedDataParallel(nn.Sequential(*layers, nn.Linear(args.hidden, 1)))
opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=args.momentum)
extra = torch.ones(args.extra_mib << 18) if rank == args.extra_mib_rank else None  # float32: 4 bytes each
kill = rank == args.kill_rank and args.kill_attempt in (None, os.environ.get("TORCHDOCTOR_ATTEMPT"))
done = 0
kept = []
for epoch in range(args.epochs):
    sampler.set_epoch(epoch)
    for step, (x, y) in enumerate(loader, start=1):
        if not args.no_zero_grad:
            opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        if rank == args.keep_graph_rank:
            kept.append(loss)
        opt.step()
        done += 1
        if kill and done == args.kill_at:
            time.sleep(0.5)  # the agent writes its events from a background thread: let the last step's go out
            os.kill(os.getpid(), signal.SIGKILL)
dist.barrier()
if args.save_params:
    torch.save({k: v.detach().clone() for k, v in model.module.state_dict().items()},
               f"{args.save_params}-rank{rank}.pt")
dist.destroy_process_group()
print(f"rank {rank} done {done} steps")
