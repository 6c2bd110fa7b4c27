"""The spec's errors: SpecError, and how its one-line messages show values and unknown keys.

Every problem in a spec is one line: "<file>: <key path>: <value>: <what is allowed / the fix>".
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from fcdm.errors import SpecError, did_you_mean

__all__ = ["SpecError", "show", "unknown_key"]


def show(value: Any, limit: int = 70) -> str:
    """A value as the user wrote it, compact, on one line."""
    plain = isinstance(value, str) and value.isprintable() and value == value.strip()
    # Anything else (a "k\n" name, a list) as JSON: quoted and escaped, so the message stays one line.
    text = value if plain else json.dumps(value, default=str, separators=(", ", ": "))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def unknown_key(src: str, where: str, key: Any, allowed: Sequence[str]) -> SpecError:
    """"<src>: <where><key>: unknown key; did you mean ...? allowed keys: ..."."""
    return SpecError(f"{src}: {where}{key}: unknown key; {did_you_mean(key, allowed)}allowed keys: "
                     f"{', '.join(allowed)}")
