"""Secrets out of anything shown: `redact(text)` masks the passwords of URIs (tracking servers, study
storages, claim databases) and password-like query or keyword parameters, wherever they appear in `text`.

    redact("postgresql://user:p/a@ss@db:5432/optuna")   -> "postgresql://user:***@db:5432/optuna"
    redact("postgresql://:pw@db/optuna")                -> "postgresql://:***@db/optuna"
    redact("postgresql://db/optuna?password=pw&x=1")     -> "postgresql://db/optuna?password=***&x=1"
    redact("sqlite:///runs/mlflow.db")                   -> unchanged

Every URI that is printed, written to a log or set as an MLflow tag goes through this one function. The
password of `user:password@host` is everything from the first ':' of the user part to the LAST '@' before
the query: a password may hold '/', '@' or ':' whether percent-encoded or not (a stray '@' in the path of
a URI that has a password masks more than needed, never less).
"""
from __future__ import annotations

import re

MASK = "***"
# A URI: scheme:// then everything up to whitespace or a quote (URIs inside messages and command lines).
_URI = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)([^\s'\"<>]*)")
# password=..., in a URI's query (?/&/;) or a libpq keyword string ("host=db password=pw").
_SECRET_PARAM = re.compile(r"(?i)((?:^|(?<=[?&;\s]))(?:password|passwd|pwd|sslpassword|secret|token|"
                           r"access_token|api_key|apikey)=)[^&;#\s'\"]*")


def _mask_userinfo(rest: str) -> str:
    """`rest` (what follows 'scheme://') with the password of its user part masked."""
    if rest.startswith("/"):  # no authority (sqlite:///path, file:///path): nothing to mask
        return rest
    head = re.split(r"[?#]", rest, maxsplit=1)[0]
    at = head.rfind("@")
    if at < 0 or ":" not in head[:at]:  # no user part, or a user without a password
        return rest
    user = head[:at].split(":", 1)[0]
    return f"{user}:{MASK}@{rest[at + 1:]}"


def redact(text: str) -> str:
    """`text` with every URI password and password-like parameter replaced by ***; text without secrets
    comes back unchanged."""
    if not text:
        return text
    text = _URI.sub(lambda m: m.group(1) + _mask_userinfo(m.group(2)), text)
    return _SECRET_PARAM.sub(lambda m: m.group(1) + MASK, text)
