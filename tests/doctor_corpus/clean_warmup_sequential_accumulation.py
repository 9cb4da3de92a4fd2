"""Warm-up then cosine decay (SequentialLR), stepped once per optimizer step; 4 micro-batches per step."""
import torch
from torch import nn

torch.set_num_threads(1)
torch.manual_seed(0)
X, Y = torch.randn(512, 8), torch.randn(512, 1)
model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
total, warm, accum = 60, 10, 4
sched = torch.optim.lr_scheduler.SequentialLR(opt, [
    torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.01, total_iters=warm),
    torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total - warm)], milestones=[warm])
micro = 0
for step in range(total):
    for _ in range(accum):
        i = (micro * 8) % 512
        (nn.functional.mse_loss(model(X[i:i + 8]), Y[i:i + 8]) / accum).backward()
        micro += 1
    opt.step()
    sched.step()
    opt.zero_grad()
