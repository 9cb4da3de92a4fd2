"""torchdoctor keeps PyTorch training runs alive and honest.

Importing this package installs nothing and does not import torch; hooks exist only inside
``torchdoctor run`` (and, later, the library's context managers).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
