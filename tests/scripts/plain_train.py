"""An ordinary training script that knows nothing of torchdoctor: shuffled DataLoader with 2 workers and random
augmentation drawn in the workers, dropout, AdamW, a per-step LR scheduler; it saves its final weights.

Variants: ``--eval`` evaluates after every epoch; ``--manual-lr`` sets the learning rate from its own step counter
instead of a scheduler; ``--save-epochs DIR`` saves the weights after every epoch; ``--no-zero-grad`` never resets
the gradients.
"""

import argparse
import os
import random
import time

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset


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
    parser.add_argument("--out", required=True)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--eval", action="store_true")
    parser.add_argument("--manual-lr", action="store_true")
    parser.add_argument("--save-epochs")
    parser.add_argument("--no-zero-grad", action="store_true", help="the classic bug: gradients add up forever")
    args = parser.parse_args()

    torch.set_num_threads(1)
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    loader = DataLoader(NoisyData(), batch_size=16, shuffle=True, num_workers=args.workers)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Dropout(0.3), nn.Linear(64, 4))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.7)
    steps = 0
    for epoch in range(args.epochs):
        model.train()
        for x, y in loader:
            if not args.no_zero_grad:
                opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            if args.manual_lr:
                for group in opt.param_groups:
                    group["lr"] = 1e-2 * 0.97 ** steps
            opt.step()
            if not args.manual_lr:
                sched.step()
            steps += 1
            time.sleep(args.sleep)
        if args.eval:
            model.eval()
            with torch.no_grad():
                accuracy = (model(loader.dataset.x).argmax(1) == loader.dataset.y).float().mean().item()
            print(f"epoch {epoch} accuracy {accuracy:.3f}")
        if args.save_epochs:
            torch.save(model.state_dict(), os.path.join(args.save_epochs, f"epoch{epoch}.pt"))
        print(f"epoch {epoch} done")
    torch.save(model.state_dict(), args.out)


if __name__ == "__main__":
    main()
