"""Deterministic training that checkpoints with torchdoctor's library API and can be killed and resumed.

Shuffled DataLoader with 2 workers and random augmentation drawn in the workers, dropout, AdamW, StepLR.
"""

import argparse
import os
import random
import signal
import time

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import torchdoctor
from torchdoctor.agent.checkpoint import committed


class NoisyData(Dataset):
    def __init__(self):
        g = torch.Generator().manual_seed(7)
        self.x, self.y = torch.randn(192, 16, generator=g), torch.randint(0, 4, (192,), generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i] + 0.1 * torch.randn(16), self.y[i]  # augmentation from the worker's own RNG


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--save-every", type=int, default=4)
    parser.add_argument("--kill-at", type=int, default=0)
    parser.add_argument("--first-step-file", help="write the wall time of the first optimizer step here (bench)")
    args = parser.parse_args()

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    loader = DataLoader(NoisyData(), batch_size=16, shuffle=True, num_workers=2)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Dropout(0.3), nn.Linear(64, 4))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.7)

    ckpt = torchdoctor.load_checkpoint(args.ckpt, model=model, optimizer=opt, scheduler=sched) \
        if committed(args.ckpt) else None
    start_epoch = ckpt.epoch if ckpt else 0
    step = ckpt.step if ckpt else 0
    for epoch in range(start_epoch, args.epochs):
        resuming = ckpt is not None and epoch == ckpt.epoch
        epoch_rng = ckpt.data["epoch_rng"] if resuming else torchdoctor.capture_rng()
        batches = torchdoctor.resume_batches(loader, ckpt) if resuming else loader
        first = ckpt.batch_index + 1 if resuming else 0
        for index, (x, y) in enumerate(batches, start=first):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            sched.step()
            step += 1
            if args.first_step_file:
                with open(args.first_step_file, "w") as handle:
                    handle.write(repr(time.time()))
                args.first_step_file = None
            if step % args.save_every == 0:
                torchdoctor.save_checkpoint(args.ckpt, model=model, optimizer=opt, scheduler=sched, epoch=epoch,
                                            step=step, epoch_rng=epoch_rng, batch_index=index)
            if step == args.kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
    print(f"steps {step}")
    torch.save(model.state_dict(), args.out)


if __name__ == "__main__":
    main()
