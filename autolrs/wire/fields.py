"""Checks of a message body's fields (:mod:`autolrs.wire.messages`): each returns the field's
value, or its default when the field is missing, and raises :class:`BodyError` naming the
field when it has the wrong type.
"""

from __future__ import annotations

from typing import Any, TypeGuard

from autolrs import actions

__all__ = [
    "BodyError",
    "bool_field",
    "dict_field",
    "int_field",
    "is_int",
    "is_number",
    "next_plan_field",
    "plan_field",
    "strings_field",
]


class BodyError(ValueError):
    """A body whose field is missing or has the wrong type; the message names the field."""


def is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def int_field(body: dict, key: str, default: Any, *, minimum: int = 0, nullable: bool = False) -> Any:
    value = body.get(key, default)
    if value is None and nullable:
        return None
    if not is_int(value) or value < minimum:
        raise BodyError(f"'{key}' must be an integer >= {minimum}{' or null' if nullable else ''}")
    return value


def bool_field(body: dict, key: str, default: bool) -> bool:
    value = body.get(key, default)
    if not isinstance(value, bool):
        raise BodyError(f"'{key}' must be true or false")
    return value


def dict_field(body: dict, key: str, *, nullable: bool = True) -> dict | None:
    value = body.get(key)
    if value is None and nullable:
        return None
    if not isinstance(value, dict):
        raise BodyError(f"'{key}' must be an object{' or null' if nullable else ''}")
    return value


def plan_field(body: dict) -> list[dict]:
    try:
        return actions.validate_plan(body.get("plan"))
    except ValueError as exc:
        raise BodyError(f"invalid plan: {exc}") from None


def next_plan_field(body: dict) -> list[dict] | None:
    """The optional prefetched plan of a hello or report reply."""
    if body.get("next") is None:
        return None
    try:
        plan = actions.validate_plan(body["next"])
    except ValueError as exc:
        raise BodyError(f"invalid next plan: {exc}") from None
    if plan[-1]["op"] != "run":
        raise BodyError("invalid next plan: it must end with 'run'")
    return plan


def strings_field(body: dict, key: str) -> tuple[str, ...]:
    value = body.get(key, [])
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        raise BodyError(f"'{key}' must be a list of strings")
    return tuple(value)
