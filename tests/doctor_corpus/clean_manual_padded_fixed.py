"""Next-token model over variable-length sequences padded by a collate function called in the loop;
the model returns (logits, loss) with padding ignored; 4 micro-batches per optimizer step."""
import torch
import torch.nn.functional as F
from torch import nn

PAD = -100


class Tagger(nn.Module):
    def __init__(self, vocab=25):
        super().__init__()
        self.emb = nn.Embedding(vocab, 12)
        self.out = nn.Linear(12, vocab)
        self.vocab = vocab

    def forward(self, ids, targets):
        logits = self.out(self.emb(ids))
        return logits, F.cross_entropy(logits.reshape(-1, self.vocab), targets.reshape(-1), ignore_index=PAD,
                                       reduction="sum")


def pad_collate(seqs):
    width = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    tgt = torch.full((len(seqs), width), PAD)
    for row, s in enumerate(seqs):
        ids[row, :len(s)] = s
        tgt[row, :len(s) - 1] = s[1:]
    return ids, tgt


torch.set_num_threads(1)
torch.manual_seed(0)
lengths = [3, 20, 5, 16] * 8  # micro-batches of short and long sequences alternate
corpus = [torch.randint(1, 25, (n,)) for n in lengths for _ in range(2)]
model = Tagger()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
accum = 4
window_tokens = 0
for step, first in enumerate(range(0, len(corpus), 2)):
    if step % accum == 0:  # count the target tokens of the whole window first
        window_tokens = sum(int((pad_collate(corpus[f:f + 2])[1] != PAD).sum())
                            for f in range(first, min(first + 2 * accum, len(corpus)), 2))
    ids, tgt = pad_collate(corpus[first:first + 2])
    logits, loss = model(ids, tgt)
    (loss / window_tokens).backward()
    if (step + 1) % accum == 0:
        optimizer.step()
        optimizer.zero_grad()
