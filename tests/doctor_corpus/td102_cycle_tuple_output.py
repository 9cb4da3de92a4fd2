"""A model that returns (logits, loss); batches drawn forever from itertools.cycle for a fixed number of steps."""
import itertools

import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 4))

    def forward(self, x, y):
        logits = self.body(x)
        return logits, nn.functional.cross_entropy(logits, y)


torch.set_num_threads(1)
torch.manual_seed(0)
batches = [(torch.randn(16, 10), torch.randint(0, 4, (16,))) for _ in range(5)]
net = Net()
opt = torch.optim.Adam(net.parameters(), lr=1e-3)
stream = itertools.cycle(batches)
for it in range(30):
    x, y = next(stream)
    _, loss = net(x, y)
    loss.backward()
    opt.zero_grad()
    opt.step()
