"""Config records as a tree of frozen dataclasses: defaults in the code, a TOML file on top,
`--section.field` CLI flags on top of that.

Every layer uses this (the engine's RunConfig, the trainer's TrainConfig), so it imports nothing
of the project. Each field carries its help text (`setting(default, help)`), from which `--help`
is generated; unknown keys and values of the wrong type are errors naming the key.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import tomllib
import typing
from dataclasses import field
from pathlib import Path
from typing import Any

from common.errors import ConfigError, MissingFile


def setting(default: Any, help: str) -> Any:
    """A config field with its help text (the only place the field is documented)."""
    if isinstance(default, (list, dict, set)):
        raise TypeError("use tuples for sequence defaults")
    return field(default=default, metadata={"help": help})


# ------------------------------------------------------------------------------ load and override

def pairs(text: str, where: str, form: str = "NAME=VALUE") -> list[tuple[str, str]]:
    """A setting written `a=1,b=2` -> [("a", "1"), ("b", "2")]; a pair without `=` or with an
    empty side is an error naming the setting and the expected form."""
    out = []
    for pair in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = (x.strip() for x in pair.partition("="))
        if not sep or not name or not value:
            raise ConfigError(f"{where}: {pair!r} is not {form}")
        out.append((name, value))
    return out


def _coerce(tp: Any, value: Any, where: str) -> Any:
    """Turn a TOML or CLI value into the field's type, naming the field on error."""
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return _choice(typing.get_args(tp), value, where)
    try:
        if origin is tuple:
            inner = typing.get_args(tp)[0]
            items = value.split(",") if isinstance(value, str) else list(value)
            return tuple(_coerce(inner, v, where) for v in items)
        if tp is bool and isinstance(value, str):
            if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ConfigError(value)
            return value.lower() in ("1", "true", "yes")
        if tp in (int, float, str) and not isinstance(value, bool):
            return tp(value)
        if tp is bool and isinstance(value, bool):
            return value
    except (TypeError, ValueError):
        pass
    raise ConfigError(f"{where}: cannot use {value!r} as {getattr(tp, '__name__', tp)}")


def _choice(allowed: tuple, value: Any, where: str) -> Any:
    if value not in allowed:
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(str, allowed))}")
    return value


def check_choices(cfg: Any, section: str = "") -> None:
    """Every `Literal`-typed field of a config record holds one of its values; call it from the
    record's `__post_init__`, so records built in Python are checked as files and flags are."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        if typing.get_origin(hints[f.name]) is typing.Literal:
            _choice(typing.get_args(hints[f.name]), getattr(cfg, f.name),
                    f"{section}.{f.name}" if section else f.name)


def _build(cls: type, values: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"unknown config key(s): {', '.join(prefix + u for u in unknown)}")
    kwargs = {}
    for name, value in values.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"{prefix}{name}: expected a table of settings")
            kwargs[name] = _build(tp, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(tp, value, prefix + name)
    return cls(**kwargs)


def _flags(cls: type, prefix: str = "") -> list[tuple[str, Any, dataclasses.Field]]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out += _flags(hints[f.name], f"{prefix}{f.name}.")
        else:
            out.append((prefix + f.name, hints[f.name], f))
    return out


def add_config_args(parser: argparse.ArgumentParser, cls: type) -> None:
    """One `--section.field` flag per config field, with the field's help text and default."""
    parser.add_argument("--config", help="TOML file with settings (CLI flags override it)")
    for name, tp, f in _flags(cls):
        default = f.default if f.default is not dataclasses.MISSING else None
        tname = getattr(tp, "__name__", str(tp)).upper()
        if typing.get_origin(tp) is typing.Literal:
            tname = "{" + ",".join(map(str, typing.get_args(tp))) + "}"
        parser.add_argument(f"--{name}", dest=name, default=None, metavar=tname,
                            help=f"{f.metadata.get('help', '')} (default: {default!r})"
                            .replace("%", "%%"))   # argparse formats help with %


def _set(tree: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for p in parents:
        tree = tree.setdefault(p, {})
    tree[leaf] = value


def config_from_args(args: argparse.Namespace, cls: type) -> Any:
    tree: dict[str, Any] = {}
    if getattr(args, "config", None):
        path = Path(args.config)
        if not path.exists():
            raise MissingFile(f"config file {path} does not exist")
        with open(path, "rb") as fh:
            try:
                tree = tomllib.load(fh)
            except tomllib.TOMLDecodeError as e:
                raise ConfigError(f"{path}: {e}") from None
    for name, _, _ in _flags(cls):
        value = getattr(args, name, None)
        if value is not None:
            _set(tree, name, value)
    return _build(cls, tree, "")


def load_toml(path: str | Path, cls: type) -> Any:
    """A config record from a TOML file alone (e.g. the train.toml the engine writes)."""
    with open(path, "rb") as fh:
        try:
            tree = tomllib.load(fh)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: {e}") from None
    try:
        return _build(cls, tree, "")
    except ValueError as e:
        raise ConfigError(f"{path}: {e}") from None


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)   # a TOML basic string (the same escapes;
        # unescaped non-ASCII, since TOML has no surrogate-pair escapes)
    if isinstance(v, (tuple, list)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def dump_toml(cfg: Any) -> str:
    """A config record as TOML that `load_toml` (and `--config`) reads back to an equal record."""
    flat = [(name, getattr_dotted(cfg, name)) for name, _, _ in _flags(type(cfg))]
    tables: dict[str, list[str]] = {}
    for name, value in flat:
        table, _, key = name.rpartition(".")
        tables.setdefault(table, []).append(f"{key} = {_toml_value(value)}")
    out = []
    for table, lines in tables.items():
        out += ([f"[{table}]"] if table else []) + lines + [""]
    return "\n".join(out)


def getattr_dotted(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
