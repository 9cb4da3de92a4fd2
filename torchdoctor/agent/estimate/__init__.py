"""``torchdoctor estimate``: a script's first optimizer steps run on fake tensors (no memory allocated, no GPU),
their storages counted as the accountant counts real ones. Imports torch; never rich, click or the supervisor.
Importing installs nothing."""
