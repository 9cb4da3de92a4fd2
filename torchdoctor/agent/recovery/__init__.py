"""The agent's side of OOM recovery: applies the supervisor's plan (micro-batches with accumulation, the batch
option, activation checkpointing, eval no_grad, AMP) to an unmodified script, and measures what the training loop
did so the supervisor can say whether the training was kept.

Imports torch; may import the top-level shared modules and ``torchdoctor.agent.*``; never rich, click or the
supervisor. Importing installs nothing.
"""
