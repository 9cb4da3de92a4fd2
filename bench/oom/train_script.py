"""The user's training script, unmodified, for ``torchdoctor run --memory-budget`` (bench/oom_recovery.py).

    python bench/oom/train_script.py --scenario a --out weights.pt
"""
import argparse

import torch
from workloads import BATCH, train

parser = argparse.ArgumentParser()
parser.add_argument("--scenario", choices=["a", "late"], required=True)
parser.add_argument("--out")
args = parser.parse_args()

model, iterations = train(args.scenario, BATCH[args.scenario])
print("loop iterations", iterations)  # under micro-batching the loop sees each micro-batch
if args.out:
    torch.save(model.state_dict(), args.out)  # no copy: a clone would need room in the budget
