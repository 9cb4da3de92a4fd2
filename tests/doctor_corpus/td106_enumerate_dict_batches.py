"""Dict batches from a DataLoader with a collate_fn, enumerate(loader, 1), a step every 3 batches (10 per epoch)."""
import torch
from torch import nn
from torch.utils.data import DataLoader


def collate(items):
    return {"x": torch.stack([i[0] for i in items]), "label": torch.tensor([i[1] for i in items])}


def main():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    items = [(torch.randn(9), int(torch.randint(0, 3, ()))) for _ in range(60)]
    loader = DataLoader(items, batch_size=6, shuffle=True, collate_fn=collate)
    model = nn.Sequential(nn.Linear(9, 18), nn.ReLU(), nn.Linear(18, 3))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    grad_accum = 3
    for epoch in range(3):
        for step, batch in enumerate(loader, 1):
            logits = model(batch["x"])
            loss = nn.functional.cross_entropy(logits, batch["label"]) / grad_accum
            loss.backward()
            if step % grad_accum == 0:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)


if __name__ == "__main__":
    main()
