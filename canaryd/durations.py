"""Go/Prometheus-style durations (`30s`, `1m`, `1h30m`, `250ms`), the format every policy uses.

Kept as seconds (float) internally; the policy keeps the user's text for display so `canaryd status`
shows `1m`, not `60.0`.
"""

from __future__ import annotations

import re

from canaryd.yamlsafe import short

_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def parse_duration(text: str) -> float:
    """Seconds in `text`; raises ValueError with the offending text on anything else."""
    if not isinstance(text, str):
        raise ValueError(f"duration must be a string like '30s' or '1m', got {short(text)}")
    s = text.strip()
    if not s:
        raise ValueError("duration is empty")
    pos = 0
    total = 0.0
    # Part by part from where the last one ended (`match`, not `finditer`: searching for the next part
    # from every later position is quadratic in a long run of digits).
    while pos < len(s):
        m = _PART.match(s, pos)
        if m is None:
            break
        total += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        pos = m.end()
    if pos != len(s):
        raise ValueError(f"invalid duration {short(text)}: use Go/Prometheus style such as 30s, 1m, 1h30m")
    return total


def format_duration(seconds: float) -> str:
    """The shortest Go-style text for `seconds` (for PromQL range selectors and messages)."""
    if seconds < 1 and seconds > 0:
        return f"{round(seconds * 1000)}ms"
    whole = round(seconds)
    if whole == 0:
        return "0s"
    parts = []
    for unit, size in (("h", 3600), ("m", 60), ("s", 1)):
        if whole >= size:
            parts.append(f"{whole // size}{unit}")
            whole %= size
    return "".join(parts)
