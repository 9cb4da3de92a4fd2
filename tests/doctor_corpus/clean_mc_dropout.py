"""Trains a dropout classifier, then averages 10 Monte Carlo dropout passes over a validation loader."""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.set_num_threads(1)
torch.manual_seed(0)
train_loader = DataLoader(TensorDataset(torch.randn(128, 10), torch.randint(0, 3, (128,))), batch_size=16, shuffle=True)
val_loader = DataLoader(TensorDataset(torch.randn(48, 10), torch.randint(0, 3, (48,))), batch_size=16)
model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 3))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
model.train()
for epoch in range(2):
    for x, y in train_loader:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
model.eval()
for module in model.modules():
    if isinstance(module, nn.Dropout):
        module.train()
probs = []
with torch.no_grad():
    for x, y in val_loader:
        samples = torch.stack([model(x).softmax(dim=1) for _ in range(10)])
        probs.append(samples.mean(dim=0))
mean_probs = torch.cat(probs)
