"""Features of the whole data set computed once by the encoder, then mini-batches of them train encoder and head."""
import torch
from torch import nn

torch.set_num_threads(1)
torch.manual_seed(0)
X, y = torch.randn(120, 10), torch.randint(0, 3, (120,))
encoder = nn.Sequential(nn.Linear(10, 16), nn.ReLU())
head = nn.Linear(16, 3)
opt_enc = torch.optim.SGD(encoder.parameters(), lr=0.01)
opt_head = torch.optim.SGD(head.parameters(), lr=0.05)
features = encoder(X)
for epoch in range(2):
    for i in range(0, 120, 20):
        opt_enc.zero_grad()
        opt_head.zero_grad()
        loss = nn.functional.cross_entropy(head(features[i:i + 20]), y[i:i + 20])
        loss.backward(retain_graph=True)
        opt_enc.step()
        opt_head.step()
