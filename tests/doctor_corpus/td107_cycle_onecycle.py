"""OneCycleLR over a fixed number of optimizer steps, batches from itertools.cycle(loader), a model returning
a dict, 2 micro-batches per step."""
from itertools import cycle

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.f = nn.Sequential(nn.Linear(5, 10), nn.ReLU(), nn.Linear(10, 2))

    def forward(self, x, y=None):
        logits = self.f(x)
        return {"logits": logits, "loss": nn.functional.cross_entropy(logits, y)}


torch.set_num_threads(1)
torch.manual_seed(0)
loader = DataLoader(TensorDataset(torch.randn(80, 5), torch.randint(0, 2, (80,))), batch_size=8, shuffle=True)
model = Model()
optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
steps, accumulation = 20, 2
scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=steps * accumulation)
batches = cycle(loader)
for micro_step in range(steps * accumulation):
    x, y = next(batches)
    out = model(x, y)
    (out["loss"] / accumulation).backward()
    if (micro_step + 1) % accumulation == 0:
        optimizer.step()
        optimizer.zero_grad()
    scheduler.step()
