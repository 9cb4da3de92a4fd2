"""Sequences padded to the longest in their batch: one batch holds a very long sequence and needs ~20x the
memory of the others, so under a budget the run dies in the middle of its first epoch, not at its start."""

import argparse

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

LONG = 150  # the index of the long sequence: batch 9 of each epoch (batch size 16, no shuffle)


class Sequences(Dataset):
    def __init__(self):
        g = torch.Generator().manual_seed(5)
        self.items = [torch.randint(1, 50, (192 if i == LONG else 8,), generator=g) for i in range(240)]
        self.labels = torch.randint(0, 4, (240,), generator=g)

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i], self.labels[i]


def pad(batch):
    longest = max(len(tokens) for tokens, _ in batch)
    tokens = torch.zeros(len(batch), longest, dtype=torch.long)
    for row, (seq, _) in enumerate(batch):
        tokens[row, :len(seq)] = seq
    return tokens, torch.stack([label for _, label in batch])


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(50, 64, padding_idx=0)
        self.mlp = nn.Sequential(nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 4))

    def forward(self, tokens):
        mask = (tokens != 0).unsqueeze(-1).float()
        per_token = self.mlp(self.embed(tokens))
        return (per_token * mask).sum(1) / mask.sum(1)  # mean over real tokens: padding does not count


parser = argparse.ArgumentParser()
parser.add_argument("--out")
args = parser.parse_args()
torch.set_num_threads(1)
torch.manual_seed(0)
loader = DataLoader(Sequences(), batch_size=16, collate_fn=pad)
model = Model()
opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
for epoch in range(2):
    for tokens, labels in loader:
        opt.zero_grad()
        nn.functional.cross_entropy(model(tokens), labels).backward()
        opt.step()
if args.out:
    torch.save(model.state_dict(), args.out)
