"""Every rank joins the gloo group, then waits far longer than the tests' --stall-timeout."""

import time

import torch
import torch.distributed as dist

dist.init_process_group("gloo")
x = torch.ones(2)
dist.all_reduce(x)
time.sleep(60)  # the stall
