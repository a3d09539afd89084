"""Typed stage configs: dataclasses whose fields carry their own help text.

A config is read from a TOML or YAML file and then overridden by ``key=value``
strings from the command line. ``describe(cls)`` renders every field with its
type, default and help for ``--help``.

Large configs are composed of option groups: dataclass mixins that name their
group in a ``group`` class attribute (``runtime``, PPO's ``rollout``, ``ppo``,
``ptx`` ...). A config stays one flat dataclass (``cfg.cliprange``, flat
constructor keywords, flat ``config.resolved.json``), and an option can also be
written with its group, ``ppo.cliprange=0.1`` on the command line or a
``[ppo]``-style sub-table in a config file. The flat name keeps working.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override that cannot be applied; the message names the key."""


def opt(default: Any, help: str, **kwargs: Any) -> Any:
    """A config field with a default and a help text (shown by ``--help``)."""
    if isinstance(default, (list, dict, set)):
        factory = (lambda d=default: type(d)(d))
        return dataclasses.field(default_factory=factory, metadata={"help": help}, **kwargs)
    return dataclasses.field(default=default, metadata={"help": help}, **kwargs)


MAX_SEED = 2**63 - 1


def check_seed(seed: int, name: str = "seed") -> None:
    """A seed every generator takes (numpy's take no negatives, torch's no more than 64 bits); else a ConfigError."""
    if not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"{name}: must be in [0, 2^63 - 1], got {seed}")


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(underlying type, optional?) for annotations like ``int | None``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else str), True
    return tp, False


def _coerce(key: str, value: Any, tp: Any) -> Any:
    base, optional = _base_type(tp)
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null") and optional):
        if optional:
            return None
        raise ConfigError(f"{key}: may not be empty (expected {getattr(base, '__name__', base)})")
    origin = typing.get_origin(base)
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            s = str(value).lower()
            if s in ("1", "true", "yes", "on"):
                return True
            if s in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"not a boolean: {value!r}")
        if base in (int, float) and isinstance(value, bool):  # TOML/YAML true is not 1
            raise ValueError(f"not a number: {value!r}")
        if base is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(f"not an integer: {value!r}")
            if isinstance(value, str):
                try:
                    f = float(value)
                except ValueError:
                    raise ValueError(f"not an integer: {value!r}") from None
                if not f.is_integer():
                    raise ValueError(f"not an integer: {value!r}")
                return int(f)
            return int(value)
        if base is float:
            try:
                number = float(value)
            except ValueError:
                raise ValueError(f"not a number: {value!r}") from None
            if not math.isfinite(number):  # nan poisons every update; inf saves a NaN model
                raise ValueError(f"not a finite number: {value!r}")
            return number
        if base is str:
            return str(value)
        if origin in (list, tuple):
            (item_tp,) = typing.get_args(base)[:1] or (str,)
            if isinstance(value, str):
                value = json.loads(value) if value.strip().startswith("[") else [v for v in value.split(",") if v]
            return [_coerce(key, v, item_tp) for v in value]
        if origin is dict:
            if isinstance(value, str):
                value = json.loads(value)
            return dict(value)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{key}: {e}") from None
    return value


def _fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def groups(cls: type) -> dict[str, list[str]]:
    """``{group: [option, ...]}`` of a config class, in field order; options of no group under ``""``.

    An option belongs to the group of the first class (from the base up) that both declares it and
    names a ``group`` of its own, so a stage may change a grouped option's default and help without
    moving it out of its group.
    """
    out: dict[str, list[str]] = {}
    bases = [c for c in reversed(cls.__mro__) if dataclasses.is_dataclass(c)]
    for f in dataclasses.fields(cls):
        name = next((c.__dict__["group"] for c in bases
                     if "group" in c.__dict__ and f.name in {g.name for g in dataclasses.fields(c)}), "")
        out.setdefault(name, []).append(f.name)
    return out


def _flat_key(cls: type, key: str, where: str) -> str:
    """``ppo.cliprange`` -> ``cliprange`` after checking the option is in that group; flat names pass."""
    if "." not in key:
        return key
    group, leaf = key.rsplit(".", 1)
    by_group = groups(cls)
    if group not in by_group or not group:
        named = ", ".join(g for g in by_group if g) or "none"
        raise ConfigError(f"{where}: {key}: {cls.__name__} has no option group {group!r} (groups: {named})")
    if leaf not in by_group[group]:
        owner = next((g for g, names in by_group.items() if leaf in names), None)
        hint = (f"it is {owner + '.' if owner else ''}{leaf}" if owner is not None
                else f"options of {group}: {', '.join(by_group[group])}")
        raise ConfigError(f"{where}: {key}: no option {leaf!r} in group {group} of {cls.__name__} ({hint})")
    return leaf


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config",
              sources: dict[str, str] | None = None) -> T:
    """Build ``cls`` from a dict, checking every key and coercing every value.

    Keys are option names, ``group.option`` names, or group names holding a dict of their options.
    The same option given twice (``cliprange`` and ``ppo.cliprange``) is an error. An error about
    one value names where it came from: ``sources[key]`` if given (a file, or "command line"), else ``where``.
    """
    hints = typing.get_type_hints(cls)
    fields = _fields(cls)
    kwargs = {}
    given: dict[str, str] = {}
    for key, value in _expand_groups(cls, data).items():
        origin = (sources or {}).get(key, where)
        name = _flat_key(cls, key, origin)
        if name not in fields:
            raise ConfigError(f"{origin}: {key}: unknown option for {cls.__name__} (see --help)")
        if name in given:
            raise ConfigError(f"{origin}: {key}: given twice (also as {given[name]})")
        given[name] = key
        try:
            kwargs[name] = _coerce(key, value, hints[name])
        except ConfigError as e:
            raise ConfigError(f"{origin}: {e}") from None
    obj = cls(**kwargs)
    check = getattr(obj, "validate", None)
    if check is not None:
        check()
    return obj


def _expand_groups(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """``{"ppo": {"cliprange": 0.1}}`` -> ``{"ppo.cliprange": 0.1}`` for the groups of ``cls``."""
    names = set(groups(cls)) - {""}
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key in names and isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A TOML (``.toml``) or YAML (``.yaml``/``.yml``) file as a flat dict.

    A file may hold one table per stage (``[sft]``, ``[rm]`` ...); ``load``
    picks the table named by its ``section`` argument when present.
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: config file not found")
    if not path.is_file():
        raise ConfigError(f"{path}: not a file (--config takes a .toml, .yaml or .json file)")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start + 1})") from None
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text) or {}
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            raise ConfigError(f"{path}: unknown config format (use .toml, .yaml or .json)")
    except (tomllib.TOMLDecodeError, yaml.YAMLError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: cannot parse: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a table of options at the top level")
    return data


def parse_overrides(items: list[str]) -> dict[str, str]:
    """``["lr=1e-4", "ppo.epochs=3"]`` -> ``{"lr": "1e-4", "ppo.epochs": "3"}``."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"{item}: overrides are written key=value")
        key, value = item.split("=", 1)
        out[key.strip().replace("-", "_")] = value
    return out


def changed_from_default(cfg: Any, names: typing.Iterable[str]) -> list[str]:
    """``name=value`` for each option of ``names`` whose value differs from its dataclass default, in ``names``'
    order: what a user (or a profile) set. The checks that refuse options which would do nothing where they are
    given (``lora_alpha`` without ``lora_r``, ``target_kl`` without ``adaptive_kl`` ...) read this."""
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    out = []
    for name in names:
        f = fields[name]
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
        if getattr(cfg, name) != default:
            out.append(f"{name}={getattr(cfg, name)!r}")
    return out


def load(cls: type[T], path: str | Path | None = None, overrides: list[str] | dict | None = None,
         section: str | None = None, known_tables: set[str] | None = None) -> T:
    """File values (the ``section`` table if the file has one), then overrides.

    Other tables of the file are other stages' sections and are skipped, except tables named like
    an option group of ``cls``; with ``known_tables`` (every stage and group name) any other table
    is an error, a misspelled ``[evl]`` included. Top-level options, and option-group tables such as
    ``[runtime]``, beside the ``section`` table are an error, not silently dropped. An override
    replaces the file's value however either is spelled (``cliprange`` or ``ppo.cliprange``).
    """
    group_names = set(groups(cls)) - {""}
    data: dict[str, Any] = {}
    if path is not None:
        raw = read_config_file(path)
        tables = sorted(k for k, v in raw.items() if isinstance(v, dict))
        unknown = [t for t in tables if known_tables is not None and t not in known_tables | group_names]
        if unknown:
            raise ConfigError(f"{path}: [{unknown[0]}]: not a stage or an option group (known tables: "
                              f"{', '.join(sorted(known_tables))})")
        if section and isinstance(raw.get(section), dict):
            top = [k for k, v in raw.items() if not isinstance(v, dict)]
            group_tables = [k for k, v in raw.items() if isinstance(v, dict) and k in group_names - {section}]
            if top or group_tables:
                moved = ", ".join(f"[{section}.{k}]" for k in group_tables)
                raise ConfigError(f"{path}: {', '.join(top + [f'[{k}]' for k in group_tables])}: top-level options "
                                  f"are not read when the file has a [{section}] table; move them into it"
                                  + (f" (as {moved})" if moved else ""))
            raw = raw[section]
        kept = {k: v for k, v in raw.items() if not isinstance(v, dict) or k in group_names}
        data.update(_expand_groups(cls, kept))
    sources = dict.fromkeys(data, str(path))
    if isinstance(overrides, list):
        overrides = parse_overrides(overrides)
    for key, value in (overrides or {}).items():
        name = _flat_key(cls, key, "command line")
        for old in [k for k in data if _flat_key(cls, k, str(path)) == name]:
            del data[old]
        data[key] = value
        sources[key] = "command line"
    return from_dict(cls, data, where=str(path) if path else "config", sources=sources)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def save(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as JSON (what a run actually used)."""
    Path(path).write_text(json.dumps(to_dict(cfg), indent=2, sort_keys=True) + "\n")


def describe(cls: type) -> str:
    """One block per field: ``name (type, default)`` and its help text; grouped options under a
    ``[group]`` heading (written ``group.name=...`` or just ``name=...``)."""
    hints = typing.get_type_hints(cls)
    own = set(cls.__dict__.get("__annotations__", {}))
    by_group = groups(cls)
    ungrouped = set(by_group.get("", []))
    fields = sorted((f for f in dataclasses.fields(cls) if f.name in ungrouped),
                    key=lambda f: f.name not in own)  # the stage's own options first
    lines = _describe_fields(fields, hints)
    for group, names in by_group.items():
        if group:
            lines.append(f" [{group}]  (write {group}.NAME=value or NAME=value)")
            lines += _describe_fields([f for f in dataclasses.fields(cls) if f.name in names], hints)
    return "\n".join(lines)


def _describe_fields(fields: list[dataclasses.Field], hints: dict[str, Any]) -> list[str]:
    lines = []
    for f in fields:
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = "(required)"
        tp = hints[f.name]
        tname = getattr(tp, "__name__", None) or str(tp).replace("typing.", "")
        lines.append(f"  {f.name} ({tname}, default {default!r})")
        help_text = f.metadata.get("help", "")
        if help_text:
            lines.append(f"      {help_text}")
    return lines
