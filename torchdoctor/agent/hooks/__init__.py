"""Where the agent meets torch: every patch of a torch attribute (one stacking registry), the call hooks
(zero_grad, clip_grad), the registry of optimizers, schedulers and scalers, the one global forward-hook dispatcher,
the phase tracker and the loop position. Every feature of the agent subscribes here instead of patching torch itself.

Imports torch; may import the top-level shared modules and ``torchdoctor.agent.*``; never rich, click or the
supervisor. Importing installs nothing.
"""
