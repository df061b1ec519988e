"""The one configuration error of autolrs (stdlib only, so every side can import it)."""

from __future__ import annotations

import difflib
from typing import Iterable

__all__ = ["ConfigError", "did_you_mean"]


class ConfigError(ValueError):
    """A configuration that cannot be used: a tuner's knobs, or the server's settings. The
    message names the key, where it came from when that matters, and what is wrong with it."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the choices closest to a misspelt ``word``, else ""."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=2, cutoff=0.6)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
