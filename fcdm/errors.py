"""The errors a user can cause, and how their one-line messages are phrased.

Every error here is a `UserError`: its message is one sentence that names the file, the key, the value
and the fix ("<file>: <key>: <value>: <fix>"), and the CLI prints it as `error: <message>` with exit
code 2 and no traceback. Each package raises its own kind (a spec problem is a SpecError, a damaged
checkpoint a CheckpointError) and the package re-exports it, so `from fcdm.spec import SpecError` works;
they live together here so that one `except UserError` covers them all, as `optuna.exceptions` does.

Each keeps the built-in base it always had (ValueError, RuntimeError, LookupError), so code that
catches those still does.
"""
from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """Something a user wrote or provided is wrong; the message says where and how to fix it."""


class ConfigError(UserError, ValueError):
    """A run configuration is invalid (a key, a value, a combination)."""


class SpecError(UserError, ValueError):
    """An ablation spec (or a `--set` given with it) is invalid."""


class DataError(UserError, ValueError):
    """Missing, empty or corrupt training data; the message names the path and the fix."""


class MetricsError(UserError, ValueError):
    """A metric cannot be computed as asked (missing weights, bad reference, malformed samples)."""


class CheckpointError(UserError, RuntimeError):
    """A checkpoint (or the progress sidecar) exists but cannot be used; the message names the file and the fix."""


class RunNotFoundError(UserError, LookupError):
    """No MLflow run matches what the user asked for."""


class LauncherError(UserError, ValueError):
    """A launcher option or environment problem a user can fix; the message says how."""


def reason(e: BaseException, limit: int = 200) -> str:
    """'<type>: <first line of the message>' (at most `limit` characters of it), or just the type when the
    message is empty (a zero-byte file's EOFError has none): the cause inside a one-line error."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:limit]}" if lines else type(e).__name__


def did_you_mean(word: object, allowed: Iterable[str], prefix: str = "") -> str:
    """"did you mean '<prefix><closest>'? " when one of `allowed` is close to `word`, else ""."""
    guess = difflib.get_close_matches(str(word), [str(a) for a in allowed], n=1)
    return f"did you mean '{prefix}{guess[0]}'? " if guess else ""
