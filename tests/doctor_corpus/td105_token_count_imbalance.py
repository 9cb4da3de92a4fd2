"""Tiny next-token model on padded synthetic sequences, accumulating gradients over windows of 4 micro-batches."""
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.set_num_threads(1)
torch.manual_seed(0)
V, L, batch_size, accumulate = 20, 16, 4, 4
tokens = torch.randint(0, V, (32, L))
targets = torch.randint(0, V, (32, L))
lengths = [1, 16, 3, 10]  # valid target tokens per sequence, by position of the batch inside its window
for n in range(32):
    targets[n, lengths[(n // batch_size) % accumulate]:] = -100
loader = DataLoader(TensorDataset(tokens, targets), batch_size=batch_size, shuffle=False)
model = nn.Sequential(nn.Embedding(V, 16), nn.Linear(16, V))
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
for epoch in range(2):
    for i, (x, t) in enumerate(loader):
        logits = model(x)
        loss = F.cross_entropy(logits.view(-1, V), t.view(-1), ignore_index=-100) / accumulate
        loss.backward()
        if (i + 1) % accumulate == 0:
            optimizer.step()
            optimizer.zero_grad()
