"""Reading run configurations: YAML files and `--set key.path=value` overrides (both read by the strict
YAML 1.2 parser of fcdm.config.strict_yaml, as specs are: `no` stays the string "no"), and one-line
validation errors that name the file, the key, the value and the fix.

    cfg = load_config("ablations/configs/smoke.yaml", overrides=["train.lr=2e-4"])
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from fcdm.config.schema import RunConfig
from fcdm.config.strict_yaml import parse_yaml, read_text
from fcdm.errors import ConfigError, SpecError, did_you_mean


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                base: dict | None = None) -> RunConfig:
    """Read a YAML run config (safe loading), apply `key.path=value` overrides, validate."""
    source = str(path) if path else "<config>"
    data = dict(base or {})
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{source}: no such config file; pass the path of a YAML run config "
                              "such as ablations/configs/smoke.yaml")
        try:
            loaded = parse_yaml(read_text(p, "run config"), source)
        except SpecError as e:  # a config's problem is a ConfigError, with the parser's one line
            raise ConfigError(str(e)) from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{source}: the top level must be a mapping of sections (model, objective, data, "
                              f"train, eval, log), not a {type(loaded).__name__}")
        data = merge(data, loaded or {})
    for item in overrides:
        data = _apply_override(data, item, source)
    return validate_config(data, source)


def validate_config(data: dict, source: str = "<config>") -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_explain(e, data, source)) from None


def merge(a: dict, b: dict) -> dict:
    """`b` deep-merged over `a` (mappings merge key by key, anything else replaces); neither is changed."""
    out = dict(a)
    for k, v in b.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _apply_override(data: dict, item: str, source: str) -> dict:
    """`data` with one `--set key.path=value` applied; the value is read as YAML 1.2 (as `run --set` does)."""
    key, sep, raw = item.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(p.strip() for p in parts):
        raise ConfigError(f"--set {item!r}: expected key.path=value, e.g. --set train.lr=2e-4")
    try:
        value = parse_yaml(raw, f"--set {key.strip()}") if raw.strip() else None
    except SpecError as e:
        raise ConfigError(str(e)) from None
    nested: Any = value
    for part in reversed(parts):
        nested = {part.strip(): nested}
    return merge(data, nested)


def _explain(err: ValidationError, data: dict, source: str) -> str:
    """The first validation error as one sentence: file, key, value, what is allowed."""
    e = err.errors()[0]
    loc = [str(p) for p in e["loc"]]
    key = ".".join(loc) or "(top level)"
    if e["type"] == "extra_forbidden":
        section_model = _section_model(loc[:-1])
        allowed = list(section_model.model_fields) if section_model else []
        hint = did_you_mean(loc[-1], allowed, ".".join(loc[:-1]) + "." if loc[:-1] else "")
        return f"{source}: unknown key '{key}'; {hint}allowed keys here: {', '.join(allowed)}"
    value = _lookup(data, loc)
    msg = e["msg"].removeprefix("Value error, ")
    if e["type"] == "value_error":
        return f"{source}: {msg}"
    if e["type"] == "missing":
        return f"{source}: key '{key}' is required: add it"
    return f"{source}: {key}={value!r} is invalid: {msg}"


def _section_model(loc: list[str]) -> type[BaseModel] | None:
    model: type[BaseModel] = RunConfig
    for part in loc:
        field = model.model_fields.get(part)
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return None
        model = field.annotation
    return model


def _lookup(data: Any, loc: list[str]) -> Any:
    for part in loc:
        if isinstance(data, dict):
            data = data.get(part)
        elif isinstance(data, (list, tuple)) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        else:
            return None
    return data
