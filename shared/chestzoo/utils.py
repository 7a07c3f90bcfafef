"""Small helpers that bundle configs call."""

from __future__ import annotations

_FALSE = {"0", "false", "no", "off", "none", ""}


def as_bool(value) -> bool:
    """A config flag as a real bool: ``--amp false`` on the command line arrives as the (truthy) string 'false'."""
    if isinstance(value, str):
        return value.strip().lower() not in _FALSE
    return bool(value)
