"""Stage 1 trains an encoder with a reconstruction decoder (its own optimizer); from step 60 an auxiliary
classifier joins the loss."""
import torch
from torch import nn

torch.set_num_threads(1)
torch.manual_seed(0)
X, labels = torch.randn(256, 10), torch.randint(0, 4, (256,))
encoder = nn.Sequential(nn.Linear(10, 12), nn.ReLU())
decoder = nn.Linear(12, 10)
opt_enc = torch.optim.Adam(encoder.parameters(), lr=1e-3)
opt_dec = torch.optim.Adam(decoder.parameters(), lr=1e-3)
classifier = None
for step in range(120):
    idx = torch.randint(0, 256, (32,))
    h = encoder(X[idx])
    loss = nn.functional.mse_loss(decoder(h), X[idx])
    if step == 60:
        classifier = nn.Linear(12, 4)
        opt_dec.add_param_group({"params": classifier.parameters()})
    if classifier is not None:
        loss = loss + nn.functional.cross_entropy(classifier(h), labels[idx])
    opt_enc.zero_grad()
    opt_dec.zero_grad()
    loss.backward()
    opt_enc.step()
    opt_dec.step()
