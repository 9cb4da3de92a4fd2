"""After training, saliency maps over a validation DataLoader: the model in eval mode, gradients of the
outputs with respect to the inputs (a backward pass per batch, no optimizer step)."""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.set_num_threads(1)
torch.manual_seed(0)
train = DataLoader(TensorDataset(torch.randn(64, 10), torch.randint(0, 2, (64,))), batch_size=16, shuffle=True)
val = DataLoader(TensorDataset(torch.randn(32, 10), torch.randint(0, 2, (32,))), batch_size=16)
model = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Dropout(0.1), nn.Linear(20, 2))
opt = torch.optim.SGD(model.parameters(), lr=0.05)
for epoch in range(2):
    model.train()
    for x, y in train:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
model.eval()
maps = []
for x, y in val:
    x = x.clone().requires_grad_(True)
    score = model(x).gather(1, y[:, None]).sum()
    score.backward()
    maps.append(x.grad.abs())
