"""Exceptions that the command line turns into one-line messages and a non-zero exit.

Every error says what went wrong, with which file or value, and what to do about it.
:func:`one_line` collapses any exception's text to the one line those messages take.
"""

from __future__ import annotations

__all__ = [
    "CacheError",
    "CheckpointError",
    "ConfigError",
    "InputError",
    "SegrenormError",
    "one_line",
]


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


def one_line(exc: BaseException | str) -> str:
    """Collapse an exception text to one line: the command line prints errors on one line.

    Args:
        exc: An exception or its text.
    """
    return " ".join(str(exc).split())
