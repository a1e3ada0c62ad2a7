"""Typed configs: pydantic models that refuse unknown keys, YAML in and out, ``key=value`` overrides.

Every stage's config derives from :class:`BaseConfig` (``extra="forbid"``), so a typo in a YAML file or
a ``--set`` option is an error naming the key instead of a silently ignored setting.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from histokd.errors import InputError
from histokd.workspace import write_text

C = TypeVar("C", bound="BaseConfig")


class BaseConfig(BaseModel):
    """Base of every histokd config: unknown keys are errors; values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


def validate_config(cls: type[C], data: dict[str, Any] | None, source: str = "config") -> C:
    """``cls(**data)`` with a one-line :class:`InputError` naming the offending keys.

    ``data`` is merged into ``cls``'s own defaults first, so that a partial nested section (``--set
    train.lr=1e-3``) keeps the other defaults *of that config class* (a method's trainer defaults) instead
    of falling back to the nested class's generic defaults.
    """
    try:
        defaults = cls().model_dump()
    except ValidationError:  # required fields: no defaults to merge into
        defaults = {}
    try:
        obj = cls.model_validate(deep_merge(defaults, data or {}))
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in e.errors()
        )
        raise InputError(f"{source}: invalid {cls.__name__} ({problems}); fix the key or value") from None
    # ``model_fields_set`` = the keys the caller gave, not every key merged in from the defaults above
    # (end-to-end WENO fills in its own defaults only for the keys left unset)
    object.__setattr__(obj, "__pydantic_fields_set__", {k for k in (data or {}) if k in cls.model_fields})
    return obj


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML mapping (``{}`` for an empty file)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: config file not found; check the path")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise InputError(f"{path}: not valid YAML ({str(e).splitlines()[0]}); fix the syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"{path}: the config must be a YAML mapping (key: value), not {type(data).__name__}")
    return data


def write_yaml(path: str | os.PathLike[str], data: dict[str, Any] | BaseModel) -> Path:
    """Write a mapping (or a config) as YAML, atomically."""
    if isinstance(data, BaseModel):
        data = data.model_dump(mode="json")
    return write_text(path, yaml.safe_dump(data, sort_keys=False))


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """``["train.lr=1e-3", "model.hidden=[64,32]"]`` -> nested dict; values are parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise InputError(f"--set {item!r}: expected key=value (e.g. train.lr=0.001)")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise InputError(f"--set {item!r}: empty key")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        set_dotted(out, key, value)
    return out


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """Set ``data["a"]["b"] = value`` for ``key="a.b"``, creating the inner mappings."""
    parts = key.split(".")
    node = data
    for p in parts[:-1]:
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise InputError(f"override {key!r}: {p!r} is a value, not a section")
        node = nxt
    node[parts[-1]] = value


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """A new dict: ``update`` merged into ``base`` recursively (mappings merged, other values replaced)."""
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out
