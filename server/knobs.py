"""``autolrs-server tuners``: every tuner with its knobs, defaults and meaning, read from each
tuner's ``knobs`` (the same mapping its configs are checked against)."""

from __future__ import annotations

import json
import sys
from typing import Any, Sequence

from autolrs.tuners import JOB_KEYS, TUNERS
from autolrs.tuners.guard_knobs import KNOBS as GUARD_KNOBS
from autolrs.tuners.guard_knobs import LIMITS as GUARD_LIMITS

__all__ = ["describe_tuners", "format_tuners", "list_tuners"]


def describe_tuners(names: Sequence[str] = ()) -> list[dict]:
    """``[{"name", "doc", "knobs": [{"name", "default", "meaning", "aliases", "limit"}]}]`` of
    ``names`` (default: every tuner; ``limit``: the largest value a job may set, or None);
    raises KeyError naming an unknown one."""
    unknown = [n for n in names if n not in TUNERS]
    if unknown:
        raise KeyError(f"unknown tuner(s) {', '.join(unknown)}; registered: {', '.join(TUNERS)}")
    out = []
    for name in names or list(TUNERS):
        cls = TUNERS[name]
        old_names: dict[str, list[str]] = {}
        for old, new in cls.aliases.items():
            old_names.setdefault(new, []).append(old)
        knobs = []
        for key, (default, meaning) in cls.knobs.items():
            public = cls.public_name(key)
            knobs.append(
                {
                    "name": public,
                    "default": default,
                    "meaning": meaning,
                    "aliases": sorted(set(old_names.get(public, [])) | ({key} - {public})),
                    "limit": cls.limits.get(key),
                }
            )
        doc = (cls.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
        out.append({"name": name, "doc": " ".join(doc.replace("``", "").split()), "knobs": knobs})
    return out


def format_tuners(tuners: list[dict]) -> str:
    lines = []
    for tuner in tuners:
        lines.append(f"{tuner['name']}: {tuner['doc']}")
        width = max((len(k["name"]) for k in tuner["knobs"]), default=0)
        shown = [_value(k["default"]) for k in tuner["knobs"]]
        dwidth = max((len(v) for v in shown), default=0)
        for knob, default in zip(tuner["knobs"], shown):
            alias = f" (formerly {', '.join(knob['aliases'])})" if knob["aliases"] else ""
            lines.append(
                f"  {knob['name']:<{width}}  {default:<{dwidth}}  {knob['meaning']}{_limit(knob['limit'])}{alias}"
            )
        lines.append("")
    lines.append("Every tuner also takes the divergence guard's knobs (docs/guard.md):")
    width = max(map(len, GUARD_KNOBS))
    for name, (default, meaning) in GUARD_KNOBS.items():
        lines.append(f"  {name:<{width}}  {_value(default):<5}  {meaning}{_limit(GUARD_LIMITS.get(name))}")
    lines.append(f"and gets, from the callback: {', '.join(JOB_KEYS)}.")
    return "\n".join(lines)


def list_tuners(names: Sequence[str] = (), as_json: bool = False) -> int:
    try:
        tuners = describe_tuners(names)
    except KeyError as exc:
        print(f"autolrs-server tuners: {exc.args[0]}", file=sys.stderr)
        return 2
    print(json.dumps(tuners, indent=2) if as_json else format_tuners(tuners))
    return 0


def _value(value: Any) -> str:
    return json.dumps(value)


def _limit(limit: int | None) -> str:
    return "" if limit is None else f" (at most {limit:,})"
