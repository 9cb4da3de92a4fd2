"""Classifier trained on in-memory tensors sliced by hand, an optimizer step every 4 micro-batches."""
import torch
from torch import nn

torch.set_num_threads(1)
torch.manual_seed(0)
X = torch.randn(320, 12)
y = (X[:, 0] > 0).long()
clf = nn.Sequential(nn.Linear(12, 24), nn.ReLU(), nn.Linear(24, 2))
opt = torch.optim.SGD(clf.parameters(), lr=0.05)
criterion = nn.CrossEntropyLoss()
MICRO, ACCUM = 8, 4

for epoch in range(2):
    perm = torch.randperm(len(X))
    for k, i in enumerate(range(0, len(X), MICRO)):
        idx = perm[i:i + MICRO]
        loss = criterion(clf(X[idx]), y[idx])
        loss.backward()
        if (k + 1) % ACCUM == 0:
            opt.step()
            opt.zero_grad()
