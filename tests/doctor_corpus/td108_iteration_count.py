"""Warm-up then linear decay via LambdaLR, stepped at the top of each of a fixed number of iterations."""
import torch
from torch import nn

torch.set_num_threads(1)
torch.manual_seed(0)
xs = torch.linspace(-2, 2, 200).unsqueeze(1)
ys = torch.sin(xs)
net = nn.Sequential(nn.Linear(1, 32), nn.Tanh(), nn.Linear(32, 1))
opt = torch.optim.Adam(net.parameters(), lr=1e-2)
iters, warm = 50, 10
lr_lambda = lambda it: min(1.0, (it + 1) / warm) * max(0.0, (iters - it) / iters)  # noqa: E731
sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
for it in range(iters):
    sched.step()
    pick = torch.randint(0, 200, (20,))
    opt.zero_grad()
    loss = nn.functional.mse_loss(net(xs[pick]), ys[pick])
    loss.backward()
    opt.step()
