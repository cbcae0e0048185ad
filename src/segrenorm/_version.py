"""The package version, written once: pyproject.toml, checkpoints, caches and logs read it."""

__version__ = "0.1.0"
