"""Moorage against the Distribution reference registry, side by side (`python -m bench`)."""
