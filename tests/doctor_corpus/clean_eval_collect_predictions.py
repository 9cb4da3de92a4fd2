"""Trains a classifier for 3 epochs, collecting per-epoch predictions for a training metric, with validation after each epoch."""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.set_num_threads(1)
torch.manual_seed(0)
train_loader = DataLoader(TensorDataset(torch.randn(128, 10), torch.randint(0, 3, (128,))), batch_size=16, shuffle=True)
val_loader = DataLoader(TensorDataset(torch.randn(48, 10), torch.randint(0, 3, (48,))), batch_size=16)
model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 3))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
for epoch in range(3):
    preds, labels = [], []
    for x, y in train_loader:
        optimizer.zero_grad()
        out = model(x)
        loss = nn.functional.cross_entropy(out, y)
        loss.backward()
        optimizer.step()
        preds.append(out.detach())
        labels.append(y)
    train_accuracy = (torch.cat(preds).argmax(dim=1) == torch.cat(labels)).float().mean().item()
    model.eval()
    correct = 0
    with torch.no_grad():
        for x, y in val_loader:
            correct += (model(x).argmax(dim=1) == y).sum().item()
    val_accuracy = correct / len(val_loader.dataset)
    model.train()
