"""Renderers of a run. None imports torch; each reads a report dict or a RunState and writes text."""
