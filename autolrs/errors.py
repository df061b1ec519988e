"""The one configuration error of autolrs (stdlib only, so every side can import it)."""

from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """A configuration that cannot be used: a tuner's knobs, or the server's settings. The
    message names the key, where it came from when that matters, and what is wrong with it."""
