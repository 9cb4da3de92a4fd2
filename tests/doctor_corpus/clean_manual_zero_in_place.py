"""Gradients reset by hand, in place (p.grad.zero_()), not through zero_grad()."""
import torch
from torch import nn

torch.set_num_threads(1)
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 2))
optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
for step in range(6):
    x, y = torch.randn(10, 6), torch.randint(0, 2, (10,))
    for p in model.parameters():
        if p.grad is not None:
            p.grad.detach_()
            p.grad.zero_()
    nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
