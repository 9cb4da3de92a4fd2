"""Tensor memory measured in the training process: exact accounting by category, the native allocator probe,
activations saved for backward, CUDA's own figures, which steps get measured, the one gc scan for live tensors and
freeing memory after an OOM.

Imports torch; may import the top-level shared modules and ``torchdoctor.agent.*``; never rich, click or the
supervisor. Importing installs nothing.
"""
