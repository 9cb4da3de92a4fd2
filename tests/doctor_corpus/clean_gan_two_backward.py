"""A GAN whose discriminator backpropagates its real and fake losses separately before one step (the sum of
the two losses is the objective)."""
import torch
from torch import nn

torch.set_num_threads(1)
torch.manual_seed(0)
netG = nn.Sequential(nn.Linear(5, 20), nn.ReLU(), nn.Linear(20, 3))
netD = nn.Sequential(nn.Linear(3, 20), nn.LeakyReLU(0.2), nn.Linear(20, 1))
optG = torch.optim.Adam(netG.parameters(), lr=2e-4)
optD = torch.optim.Adam(netD.parameters(), lr=2e-4)
criterion = nn.BCEWithLogitsLoss()
for i in range(25):
    real = torch.randn(32, 3) * 0.3
    netD.zero_grad()
    err_real = criterion(netD(real), torch.ones(32, 1))
    err_real.backward()
    fake = netG(torch.randn(32, 5))
    err_fake = criterion(netD(fake.detach()), torch.zeros(32, 1))
    err_fake.backward()
    optD.step()
    netG.zero_grad()
    err_g = criterion(netD(fake), torch.ones(32, 1))
    err_g.backward()
    optG.step()
