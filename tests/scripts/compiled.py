"""A torch.compile'd model: it must really be compiled under torchdoctor, not silently run eagerly."""

import torch
from torch import nn
from torch._dynamo.utils import counters

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(inplace=True), nn.Linear(64, 4))
compiled = torch.compile(model, backend="aot_eager")
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for _ in range(6):
    opt.zero_grad()
    loss = compiled(torch.randn(16, 32)).pow(2).mean()
    loss.backward()
    opt.step()
print(f"frames_ok={counters['frames']['ok']} loss={loss.item():.6f}")
