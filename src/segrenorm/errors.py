"""Exceptions that the command line turns into one-line messages and a non-zero exit.

Every error says what went wrong, with which file or value, and what to do about it.
"""

from __future__ import annotations

__all__ = ["CacheError", "CheckpointError", "ConfigError", "InputError", "SegrenormError"]


class SegrenormError(Exception):
    """Base class of every error that segrenorm reports to a user."""


class InputError(SegrenormError, ValueError):
    """A volume, label map or listing that cannot be used as given."""


class CacheError(SegrenormError):
    """A slice cache that is missing, incomplete or inconsistent."""


class ConfigError(SegrenormError, ValueError):
    """A configuration value that is unknown or out of range."""


class CheckpointError(SegrenormError):
    """A checkpoint file that is corrupt, from another format version or incomplete."""
