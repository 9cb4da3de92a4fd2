"""Linear warm-up stepped once per optimizer step for 60 steps, then a decay scheduler that the script steps after
every micro-batch (accumulation over 2 micro-batches)."""
import torch
from torch import nn

torch.set_num_threads(1)
torch.manual_seed(0)
X, Y = torch.randn(400, 6), torch.randn(400, 2)
model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2))
optimizer = torch.optim.SGD(model.parameters(), lr=0.02)
warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.1, total_iters=60)
decay = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.999)
accum, step, micro = 2, 0, 0
while step < 130:
    i = (micro * 8) % 400
    loss = nn.functional.mse_loss(model(X[i:i + 8]), Y[i:i + 8]) / accum
    loss.backward()
    micro += 1
    if micro % accum == 0:
        optimizer.step()
        optimizer.zero_grad()
        step += 1
        if step <= 60:
            warmup.step()
        else:
            decay.step()
