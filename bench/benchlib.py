"""What every benchmark script shares: its JSON report (the scripts run as ``python bench/X.py``,
so this folder is on ``sys.path``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_report(path: str | Path, report: Any) -> Path:
    """Write ``report`` as JSON at ``path`` (folders made as needed; numpy scalars as floats)
    and say where."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=float) + "\n")
    print(f"wrote {out}")
    return out
