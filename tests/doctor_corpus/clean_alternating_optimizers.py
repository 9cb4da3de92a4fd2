"""Alternating optimisation: two optimizers over two halves of one model, stepping on alternate iterations;
model.zero_grad() resets everything each iteration."""
import torch
from torch import nn

torch.set_num_threads(1)
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
opt_first = torch.optim.SGD(model[0].parameters(), lr=0.05)
opt_last = torch.optim.SGD(model[2].parameters(), lr=0.05)
x, y = torch.randn(64, 4), torch.randn(64, 1)
for it in range(30):
    model.zero_grad()
    nn.functional.mse_loss(model(x), y).backward()
    (opt_first if it % 2 == 0 else opt_last).step()
