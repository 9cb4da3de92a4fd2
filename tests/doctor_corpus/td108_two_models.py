"""A GAN whose generator and discriminator each have an optimizer and a StepLR; the discriminator's schedule is
stepped at the top of each iteration."""
import torch
from torch import nn

torch.set_num_threads(1)
torch.manual_seed(0)
gen = nn.Sequential(nn.Linear(3, 12), nn.ReLU(), nn.Linear(12, 2))
disc = nn.Sequential(nn.Linear(2, 12), nn.ReLU(), nn.Linear(12, 1))
g_opt = torch.optim.Adam(gen.parameters(), lr=1e-3)
d_opt = torch.optim.Adam(disc.parameters(), lr=1e-3)
g_sched = torch.optim.lr_scheduler.StepLR(g_opt, step_size=10, gamma=0.9)
d_sched = torch.optim.lr_scheduler.StepLR(d_opt, step_size=10, gamma=0.9)
bce = nn.BCEWithLogitsLoss()
for it in range(30):
    d_sched.step()
    real = torch.randn(16, 2) + 2
    fake = gen(torch.randn(16, 3))
    d_opt.zero_grad()
    d_loss = bce(disc(real), torch.ones(16, 1)) + bce(disc(fake.detach()), torch.zeros(16, 1))
    d_loss.backward()
    d_opt.step()
    g_opt.zero_grad()
    g_loss = bce(disc(fake), torch.ones(16, 1))
    g_loss.backward()
    g_opt.step()
    g_sched.step()
