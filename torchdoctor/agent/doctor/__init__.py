"""The doctor: training-loop bugs (the catalog in ``torchdoctor.checks``) proven from the call protocol the hooks
see, per-parameter gradient bookkeeping and the autograd graph.

Imports torch; may import the top-level shared modules and ``torchdoctor.agent.*``; never rich, click or the
supervisor. Importing installs nothing.
"""
