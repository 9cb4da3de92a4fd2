"""Trains for max_steps over a DataLoader re-iterated on StopIteration; a cache of embeddings per sample id
is filled and never bounded (new ids every pass)."""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.set_num_threads(1)
torch.manual_seed(0)
ds = TensorDataset(torch.randn(256, 32), torch.randn(256, 1))
loader = DataLoader(ds, batch_size=64, shuffle=True)
model = nn.Sequential(nn.Linear(32, 2048), nn.ReLU(), nn.Linear(2048, 1))
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
cache = {}
it, step, seen = iter(loader), 0, 0
while step < 40:
    try:
        x, y = next(it)
    except StopIteration:
        it = iter(loader)
        continue
    optimizer.zero_grad()
    hidden = model[1](model[0](x))
    nn.functional.mse_loss(model[2](hidden), y).backward()
    optimizer.step()
    cache[seen] = hidden.detach().clone()
    seen += 1
    step += 1
