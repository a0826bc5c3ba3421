"""HTTP: the OCI `/v2` API, the admin API, health and metrics.

The only package that imports the web framework.
"""
