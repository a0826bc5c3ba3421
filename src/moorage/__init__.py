"""Moorage: a private OCI registry that runs as a cluster of replicas."""

__version__ = "0.1.0"
