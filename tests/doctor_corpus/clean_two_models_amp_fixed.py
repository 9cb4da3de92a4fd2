"""A GAN trained with bf16 autocast and one GradScaler; the generator's gradients are clipped."""
import torch
from torch import nn

torch.set_num_threads(1)
torch.manual_seed(0)
G = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
D = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 1))
opt_g = torch.optim.Adam(G.parameters(), lr=1e-3)
opt_d = torch.optim.Adam(D.parameters(), lr=1e-3)
scaler = torch.amp.GradScaler("cpu")
bce = nn.BCEWithLogitsLoss()
for it in range(20):
    real = torch.randn(16, 2) + 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fake = G(torch.randn(16, 4))
        d_loss = bce(D(real), torch.ones(16, 1)) + bce(D(fake.detach()), torch.zeros(16, 1))
    opt_d.zero_grad()
    scaler.scale(d_loss).backward()
    scaler.step(opt_d)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        g_loss = bce(D(fake), torch.ones(16, 1))
    opt_g.zero_grad()
    scaler.scale(g_loss).backward()
    scaler.unscale_(opt_g)
    torch.nn.utils.clip_grad_norm_(G.parameters(), 0.5)
    scaler.step(opt_g)
    scaler.update()
