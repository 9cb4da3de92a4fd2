"""Truncated backpropagation through time: the hidden state is carried over, detached."""
import torch
from torch import nn

torch.set_num_threads(1)
torch.manual_seed(0)
rnn = nn.GRU(4, 8, batch_first=True)
head = nn.Linear(8, 4)
optimizer = torch.optim.Adam(list(rnn.parameters()) + list(head.parameters()), lr=1e-3)
sequence = torch.randn(2, 60, 4)
hidden = None
for start in range(0, 60, 10):
    chunk = sequence[:, start:start + 10]
    optimizer.zero_grad()
    output, hidden = rnn(chunk, hidden)
    hidden = hidden.detach()
    loss = nn.functional.mse_loss(head(output[:, :-1]), chunk[:, 1:])
    loss.backward()
    optimizer.step()
