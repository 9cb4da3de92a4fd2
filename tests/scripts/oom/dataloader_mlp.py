"""MLP, batch 1024 from a shuffled DataLoader: activations dominate, so it OOMs under a 16 MiB budget in backward."""
import argparse

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

p = argparse.ArgumentParser(); p.add_argument("--out"); p.add_argument("--epochs", type=int, default=2)
a = p.parse_args()
torch.manual_seed(0)
g = torch.Generator().manual_seed(1)
ds = TensorDataset(torch.randn(4096, 256, generator=g), torch.randint(0, 10, (4096,), generator=g))
loader = DataLoader(ds, batch_size=1024, shuffle=True)
model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))
opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
steps = 0
for epoch in range(a.epochs):
    for x, y in loader:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        sched.step()
        steps += 1
print("loop iterations", steps)  # under micro-batching the loop sees each micro-batch
if a.out:
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, a.out)
