"""The mistakes a user can make, one exception type per kind (ground layer: imports nothing of satlib).

Every message is one line that names the bad value, what is accepted, and the fix. The command line
(``python -m satlib``) prints that line alone and exits with status 2; ``--debug`` (or ``SATLIB_DEBUG=1``) shows
the traceback too. Each type also derives from the built-in exception a caller would expect (``ValueError``,
``FileNotFoundError``, ``ConnectionError``), so ``except ValueError`` keeps working.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

T = TypeVar("T")


class SatlibError(Exception):
    """A mistake or fault the user can fix; the message says how."""


class ConfigurationError(SatlibError, ValueError):
    """A bad argument, preset, setting, parameter file or command-line option."""


class MissingArtefactError(SatlibError, FileNotFoundError):
    """Something the book builds (a checkpoint, a snapshot, a cache entry) is not there yet."""


class DamagedArtefactError(SatlibError, ValueError):
    """Something on disk does not match the checksum recorded when it was written, or cannot be parsed."""


class OfflineError(SatlibError, ConnectionError):
    """The work needs a network (the Hugging Face hub, a package registry) and there is none."""


class FitError(SatlibError, ValueError):
    """A fit that the data cannot determine (too few points, degenerate values)."""


def chosen(choices: Mapping[str, T], name: str, what: str) -> T:
    """``choices[name]``, or a one-line :class:`ConfigurationError` naming ``what`` and the accepted names."""
    if name not in choices:
        raise ConfigurationError(f"unknown {what} {name!r}: use one of {sorted(choices)}")
    return choices[name]
