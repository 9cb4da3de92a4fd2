"""
Train a small character-level GPT on a synthetic corpus, nanoGPT style.

Configuration lives in module-level globals; override any of them from the command line:
    python nanogpt_char.py --batch_size=32 --max_iters=40 --out_dir=out-char
Writes out_dir/ckpt.pt with the final model's state_dict.
"""

import math
import os
import sys
import time
from ast import literal_eval

import torch
import torch.nn as nn
from torch.nn import functional as F

# -----------------------------------------------------------------------------
# default config values
out_dir = 'out-char'
eval_interval = 5
eval_iters = 4
log_interval = 1
# data
dataset = 'synthetic_chars'
gradient_accumulation_steps = 2  # used to simulate larger batch sizes
batch_size = 24  # micro-batch size
block_size = 64
# model
n_layer = 2
n_head = 4
n_embd = 96
dropout = 0.0
bias = True
# adamw optimizer
learning_rate = 3e-3
max_iters = 16
weight_decay = 1e-1
beta1 = 0.9
beta2 = 0.99
grad_clip = 1.0  # clip gradients at this value, or disable if == 0.0
# learning rate decay settings
decay_lr = True
warmup_iters = 4
lr_decay_iters = 16
min_lr = 3e-4
seed = 1337
# -----------------------------------------------------------------------------
# poor man's configurator: --key=value overrides a global above
for arg in sys.argv[1:]:
    if not arg.startswith('--') or '=' not in arg:
        raise SystemExit(f"expected --key=value, got {arg!r}")
    key, val = arg[2:].split('=', 1)
    assert key in globals(), f"unknown config key: {key}"
    try:
        parsed = literal_eval(val)
    except (SyntaxError, ValueError):
        parsed = val  # a plain string such as a directory name
    if isinstance(globals()[key], float) and isinstance(parsed, int) and not isinstance(parsed, bool):
        parsed = float(parsed)
    assert type(parsed) == type(globals()[key]), f"{key}: expected {type(globals()[key]).__name__}"
    print(f"Overriding: {key} = {parsed}")
    globals()[key] = parsed
config = {k: v for k, v in globals().items() if not k.startswith('_') and isinstance(v, (int, float, bool, str))}
# -----------------------------------------------------------------------------

os.makedirs(out_dir, exist_ok=True)
torch.manual_seed(seed)
device = 'cpu'
tokens_per_iter = gradient_accumulation_steps * batch_size * block_size
print(f"tokens per iteration will be: {tokens_per_iter:,}")

# -----------------------------------------------------------------------------
# synthetic corpus: words built from a few syllables, arranged in repeating phrases, with some noise


def make_corpus(n_chars, g):
    syllables = ['ka', 'lo', 'mi', 'ne', 'ru', 'sa', 'to', 'vi', 'ze', 'qu', 'xo', 'pe']
    words = []
    for _ in range(40):
        k = int(torch.randint(1, 4, (1,), generator=g))
        idx = torch.randint(0, len(syllables), (k,), generator=g).tolist()
        words.append(''.join(syllables[i] for i in idx))
    phrases = []
    for _ in range(12):
        k = int(torch.randint(3, 8, (1,), generator=g))
        idx = torch.randint(0, len(words), (k,), generator=g).tolist()
        phrases.append(' '.join(words[i] for i in idx))
    punct = '.,;!?'
    out = []
    total = 0
    while total < n_chars:
        p = phrases[int(torch.randint(0, len(phrases), (1,), generator=g))]
        if float(torch.rand((), generator=g)) < 0.3:
            p = p.capitalize()
        p = p + punct[int(torch.randint(0, len(punct), (1,), generator=g))]
        if float(torch.rand((), generator=g)) < 0.1:
            p = p + str(int(torch.randint(0, 10, (1,), generator=g)))
        p = p + ('\n' if float(torch.rand((), generator=g)) < 0.2 else ' ')
        out.append(p)
        total += len(p)
    return ''.join(out)[:n_chars]


text = make_corpus(60_000, torch.Generator().manual_seed(2024))
chars = sorted(list(set(text)))
vocab_size = len(chars)
print(f"length of dataset in characters: {len(text):,}")
print(f"all the unique characters: {''.join(chars)!r}")
print(f"vocab size: {vocab_size:,}")
stoi = {ch: i for i, ch in enumerate(chars)}
itos = {i: ch for i, ch in enumerate(chars)}
encode = lambda s: [stoi[c] for c in s]
decode = lambda l: ''.join([itos[i] for i in l])
data_all = torch.tensor(encode(text), dtype=torch.long)
n = int(0.9 * len(data_all))
train_data = data_all[:n]
val_data = data_all[n:]


def get_batch(split):
    data = train_data if split == 'train' else val_data
    ix = torch.randint(len(data) - block_size, (batch_size,))
    x = torch.stack([data[i:i + block_size] for i in ix])
    y = torch.stack([data[i + 1:i + 1 + block_size] for i in ix])
    return x.to(device), y.to(device)


# -----------------------------------------------------------------------------
# the model


class CausalSelfAttention(nn.Module):

    def __init__(self, n_embd, n_head, block_size, dropout, bias):
        super().__init__()
        assert n_embd % n_head == 0
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.attn_dropout = nn.Dropout(dropout)
        self.resid_dropout = nn.Dropout(dropout)
        self.n_head = n_head
        self.n_embd = n_embd
        self.register_buffer("bias", torch.tril(torch.ones(block_size, block_size))
                             .view(1, 1, block_size, block_size))

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        # manual attention: (B, nh, T, hs) x (B, nh, hs, T) -> (B, nh, T, T)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = att.masked_fill(self.bias[:, :, :T, :T] == 0, float('-inf'))
        att = F.softmax(att, dim=-1)
        att = self.attn_dropout(att)
        y = att @ v
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):

    def __init__(self, n_embd, dropout, bias):
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * n_embd, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):

    def __init__(self, n_embd, n_head, block_size, dropout, bias):
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd, bias=bias)
        self.attn = CausalSelfAttention(n_embd, n_head, block_size, dropout, bias)
        self.ln_2 = nn.LayerNorm(n_embd, bias=bias)
        self.mlp = MLP(n_embd, dropout, bias)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):

    def __init__(self, vocab_size, block_size, n_layer, n_head, n_embd, dropout, bias):
        super().__init__()
        self.block_size = block_size
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(vocab_size, n_embd),
            wpe=nn.Embedding(block_size, n_embd),
            drop=nn.Dropout(dropout),
            h=nn.ModuleList([Block(n_embd, n_head, block_size, dropout, bias) for _ in range(n_layer)]),
            ln_f=nn.LayerNorm(n_embd, bias=bias),
        ))
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying
        self.apply(self._init_weights)
        for pn, p in self.named_parameters():
            if pn.endswith('c_proj.weight'):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))
        print("number of parameters: %.2fM" % (self.get_num_params() / 1e6,))

    def get_num_params(self):
        return sum(p.numel() for p in self.parameters()) - self.transformer.wpe.weight.numel()

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets=None):
        b, t = idx.size()
        assert t <= self.block_size, f"sequence of length {t} exceeds block size {self.block_size}"
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        if targets is not None:
            logits = self.lm_head(x)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        else:
            logits = self.lm_head(x[:, [-1], :])  # inference: only the last position
            loss = None
        return logits, loss

    def configure_optimizers(self, weight_decay, learning_rate, betas):
        params = [p for p in self.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        nodecay = [p for p in params if p.dim() < 2]
        groups = [{'params': decay, 'weight_decay': weight_decay}, {'params': nodecay, 'weight_decay': 0.0}]
        print(f"num decayed parameter tensors: {len(decay)}, with {sum(p.numel() for p in decay):,} parameters")
        print(f"num non-decayed parameter tensors: {len(nodecay)}, with {sum(p.numel() for p in nodecay):,} parameters")
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas)


model = GPT(vocab_size, block_size, n_layer, n_head, n_embd, dropout, bias)
model.to(device)
optimizer = model.configure_optimizers(weight_decay, learning_rate, (beta1, beta2))


@torch.no_grad()
def estimate_loss():
    out = {}
    model.eval()
    for split in ['train', 'val']:
        losses = torch.zeros(eval_iters)
        for k in range(eval_iters):
            X, Y = get_batch(split)
            logits, loss = model(X, Y)
            losses[k] = loss.item()
        out[split] = losses.mean()
    model.train()
    return out


def get_lr(it):
    # 1) linear warmup for warmup_iters steps
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    # 2) past lr_decay_iters, return min learning rate
    if it > lr_decay_iters:
        return min_lr
    # 3) in between, cosine decay down to min learning rate
    decay_ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
    assert 0 <= decay_ratio <= 1
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
    return min_lr + coeff * (learning_rate - min_lr)


# training loop
X, Y = get_batch('train')  # fetch the very first batch
t0 = time.time()
iter_num = 0
best_val_loss = 1e9
while True:

    # determine and set the learning rate for this iteration
    lr = get_lr(iter_num) if decay_lr else learning_rate
    for param_group in optimizer.param_groups:
        param_group['lr'] = lr

    # evaluate the loss on train/val sets
    if iter_num % eval_interval == 0:
        losses = estimate_loss()
        print(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
        if losses['val'] < best_val_loss:
            best_val_loss = losses['val']

    # forward backward update, with optional gradient accumulation to simulate larger batch size
    for micro_step in range(gradient_accumulation_steps):
        logits, loss = model(X, Y)
        loss = loss / gradient_accumulation_steps  # scale the loss to account for gradient accumulation
        # prefetch the next batch while the "device" is busy
        X, Y = get_batch('train')
        loss.backward()
    if grad_clip != 0.0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)

    t1 = time.time()
    dt = t1 - t0
    t0 = t1
    if iter_num % log_interval == 0:
        lossf = loss.item() * gradient_accumulation_steps
        print(f"iter {iter_num}: loss {lossf:.4f}")
    iter_num += 1

    if iter_num > max_iters:
        break

# final evaluation on a fixed held-out set: the first contiguous windows of the validation split
model.eval()
with torch.no_grad():
    n_windows = 32
    starts = torch.arange(n_windows) * ((len(val_data) - block_size - 1) // n_windows)
    Xv = torch.stack([val_data[i:i + block_size] for i in starts])
    Yv = torch.stack([val_data[i + 1:i + 1 + block_size] for i in starts])
    total = 0.0
    for j in range(0, n_windows, 8):
        _, vloss = model(Xv[j:j + 8], Yv[j:j + 8])
        total += vloss.item() * Xv[j:j + 8].size(0)
    final_val = total / n_windows
print(f"final val loss {final_val:.8f}")

checkpoint_path = os.path.join(out_dir, 'ckpt.pt')
print(f"saving checkpoint to {out_dir}")
torch.save(model.state_dict(), checkpoint_path)
