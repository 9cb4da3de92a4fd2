"""A small GPT-like language model trained for a few steps on synthetic tokens: the workload of bench/relaunch.py.

    python bench/relaunch_gpt.py [--steps 10]

Prints one line as soon as torch is imported and the model is built (flushed, so a pipe sees it at once), then
trains: token and position embeddings, pre-norm transformer blocks with causal self-attention, AdamW.
"""

import argparse

import torch
from torch import nn
from torch.nn import functional as F


class Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, vocab: int, block: int, dim: int, layers: int, heads: int) -> None:
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, dim), nn.Embedding(block, dim)
        self.blocks = nn.ModuleList([Block(dim, heads) for _ in range(layers)])
        self.ln, self.head = nn.LayerNorm(dim), nn.Linear(dim, vocab)
        self.register_buffer("mask", torch.triu(torch.ones(block, block, dtype=torch.bool), diagonal=1))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos(torch.arange(idx.size(1)))
        for block in self.blocks:
            x = block(x, self.mask)
        return self.head(self.ln(x))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    torch.manual_seed(0)
    vocab, block = 256, 64
    model = GPT(vocab, block, dim=128, layers=4, heads=4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
    print(f"gpt: {sum(p.numel() for p in model.parameters())} parameters", flush=True)
    tokens = torch.randint(0, vocab, (args.batch * args.steps, block + 1))
    for step in range(args.steps):
        batch = tokens[step * args.batch:(step + 1) * args.batch]
        logits = model(batch[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    print(f"gpt: {args.steps} steps, loss {loss.item():.4f}", flush=True)


if __name__ == "__main__":
    main()
