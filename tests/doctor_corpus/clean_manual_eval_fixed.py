"""Trains on random mini-batches for 90 steps and evaluates on a held-out tensor every 30 steps."""
import torch
from torch import nn

torch.set_num_threads(1)
torch.manual_seed(0)
X_train, y_train = torch.randn(600, 16), torch.randint(0, 5, (600,))
X_val, y_val = torch.randn(200, 16), torch.randint(0, 5, (200,))
model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 5))
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)


@torch.no_grad()
def validate():
    model.eval()
    correct = 0
    for i in range(0, len(X_val), 50):
        logits = model(X_val[i:i + 50])
        correct += (logits.argmax(1) == y_val[i:i + 50]).sum().item()
    model.train()
    return correct / len(X_val)


for step in range(1, 91):
    idx = torch.randint(0, len(X_train), (32,))
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(X_train[idx]), y_train[idx]).backward()
    optimizer.step()
    if step % 30 == 0:
        validate()
