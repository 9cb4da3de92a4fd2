"""``torchdoctor run --checkpoint-every N`` and the relaunch after it: an unmodified script's training state found,
saved atomically, and put back with the data replayed to where it was.

Imports torch; may import the top-level shared modules and ``torchdoctor.agent.*``; never rich, click or the
supervisor. Importing installs nothing.
"""
