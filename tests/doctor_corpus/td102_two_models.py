"""An autoencoder with separate encoder and decoder optimizers (different learning rates)."""
import torch
from torch import nn

torch.set_num_threads(1)
torch.manual_seed(0)
encoder = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
decoder = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 16))
enc_opt = torch.optim.Adam(encoder.parameters(), lr=1e-3)
dec_opt = torch.optim.Adam(decoder.parameters(), lr=5e-4)
data = torch.randn(256, 16)
step, max_steps = 0, 40
while step < max_steps:
    batch = data[torch.randint(0, 256, (32,))]
    enc_opt.zero_grad()
    recon = decoder(encoder(batch))
    loss = ((recon - batch) ** 2).mean()
    loss.backward()
    enc_opt.step()
    dec_opt.zero_grad()
    dec_opt.step()
    step += 1
