"""Code that runs inside the training process: hooks, memory accounting, the event emitter.

Nothing here imports rich or click; importing this package installs nothing.
"""
