"""Checks of values a user gives, shared by every module: one kind of mistake, one message."""

from __future__ import annotations


def is_whole(value, least: int = 1) -> bool:
    """Whether ``value`` is an ``int`` (not a bool) of at least ``least``."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def check_whole(name: str, value, least: int = 1, *, allowed: str | None = None) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is an integer >= ``least``; ``allowed``
    replaces the default description of what is allowed (e.g. to mention a ``None`` default)."""
    if not is_whole(value, least):
        raise ValueError(f"{name}={value!r} is not allowed; allowed values: {allowed or f'an integer >= {least}'}")


def check_real(name: str, value, allowed: str, ok: bool) -> None:
    """Raise ``ValueError`` naming ``name`` and what is ``allowed`` unless ``value`` is a real
    number (not a bool) and ``ok`` (the caller's range test) holds."""
    if not ok or isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name}={value!r} is not allowed; allowed values: {allowed}")


def check_flag(name: str, value) -> bool:
    """``value`` if it is a real bool, else ``ValueError`` naming ``name`` (a papermill ``-p x 0`` or
    ``-p x no`` arrives as an int or a string, which would read as true or false by accident)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name}={value!r} is not allowed; allowed values: true or false (-p {name} True)")
    return value
