"""Each DataLoader batch of 32 is split by hand into 4 chunks that are backpropagated one by one
(to fit memory), then one optimizer step."""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.set_num_threads(1)
torch.manual_seed(0)
ds = TensorDataset(torch.randn(192, 20), torch.randn(192, 3))
loader = DataLoader(ds, batch_size=32, shuffle=True)
net = nn.Sequential(nn.Linear(20, 40), nn.SiLU(), nn.Linear(40, 3))
optim = torch.optim.Adam(net.parameters(), lr=1e-3)
n_chunks = 4
for epoch in range(2):
    for inputs, targets in loader:
        optim.zero_grad()
        for xs, ys in zip(inputs.chunk(n_chunks), targets.chunk(n_chunks)):
            loss = nn.functional.smooth_l1_loss(net(xs), ys) / n_chunks
            loss.backward()
        optim.step()
