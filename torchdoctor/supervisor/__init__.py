"""The parent process of ``torchdoctor run`` and ``torchdoctor ci``: launches the agent, folds its events into a
RunState, decides on recovery, builds the report.

Never imports torch (``tests/unit/test_torch_free_modules.py`` checks, with torch blocked). May import the top-level
shared modules (events, config, plan, files, sizes, oom, checks, errors); never ``torchdoctor.agent``, whose only
contract with this side is the event stream (``torchdoctor.events``) and the settings (``torchdoctor.config``).
Importing this package installs nothing.
"""
