"""Chaos harness for Moorage clusters: `python -m chaos --help`."""
