"""TOML settings with environment overrides, shared by edge-node and cloud-hub.

An override ``{PREFIX}__{SECTION}__{KEY}=value`` replaces ``[section] key`` (names are
case-insensitive; values are converted to the key's type; a list is written as a TOML array,
``'["a", "b"]'``). A bad file or value raises
:class:`SettingsError` naming the key and where it came from, and for a key with a fixed set of
values, the values it accepts.

Where the file is (:func:`find_settings`): ``--config``, else the file an environment variable
names, else a fixed system path; the error for a missing one says everything that was tried.
Relative paths written in a file (the keys a process lists in ``path_keys``) are taken relative
to that file's folder, so a command finds the same files from any current folder; relative paths
in environment overrides stay relative to the current folder, as in any shell command.
"""

from __future__ import annotations

import re
import tomllib
import typing
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import msgspec

T = TypeVar("T")
_PATH = re.compile(r" - at `\$\.?([^`]*)`$")


class SettingsError(ValueError):
    """A settings file or override that cannot be used; the message names key and source."""


@dataclass(frozen=True, slots=True)
class Found:
    """The settings file to read (None: defaults and overrides only) and how it was found."""

    path: Path | None
    how: str


def find_settings(
    explicit: Path | None, environ: Mapping[str, str], env_var: str, system_path: Path
) -> Found:
    """``explicit`` (``--config``), else ``$env_var``, else ``system_path`` if it exists.

    A file named by ``--config`` or the variable must exist: SettingsError says which was
    tried. With neither and no system file the result has no path, and ``how`` lists all three
    for messages such as "no settings file (tried ...)".
    """
    if explicit is not None:
        if not explicit.is_file():
            raise SettingsError(f"--config {explicit}: no such file{_cwd_note(explicit)}")
        return Found(explicit, f"--config {explicit}")
    named = environ.get(env_var, "")
    if named:
        if not Path(named).is_file():
            raise SettingsError(f"{env_var}={named}: no such file{_cwd_note(Path(named))}")
        return Found(Path(named), f"{env_var}={named}")
    if system_path.is_file():
        return Found(system_path, str(system_path))
    return Found(
        None, f"no settings file: tried --config (not given), {env_var} (not set), {system_path}"
    )


def _cwd_note(path: Path) -> str:
    return "" if path.is_absolute() else f" (relative to {Path.cwd()})"


def load_settings(
    typ: type[T],
    path: Path | None,
    environ: Mapping[str, str],
    prefix: str,
    path_keys: Collection[str] = (),
) -> T:
    """Read ``path`` (optional), apply ``{prefix}__SECTION__KEY`` overrides, validate as ``typ``.

    ``path_keys`` ("section.key") are file paths: relative ones in the file are made relative
    to the file's folder.
    """
    raw: dict[str, Any] = {}
    source = str(path) if path else "defaults"
    if path is not None:
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise SettingsError(f"{path}: cannot read settings: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"{path}: not valid TOML: {exc}") from None
        _anchor_paths(raw, path.parent, path_keys)
    overridden = _apply_overrides(raw, environ, prefix)
    try:
        return msgspec.convert(raw, type=typ, strict=False)
    except msgspec.ValidationError as exc:
        text = str(exc)
        match = _PATH.search(text)
        key = match.group(1) if match else ""
        text = text[: match.start()] if match else text
        missing = re.search(r"(?:missing required|unknown) field `([^`]+)`", text)
        if missing:
            key = f"{key}.{missing.group(1)}" if key else missing.group(1)
        choices = _choices(typ, key) if "enum value" in text else []
        if choices:
            text += f"; valid values: {', '.join(choices)}"
        origin = overridden.get(key, source)
        raise SettingsError(f"{origin}: key {key or '(top level)'}: {text}") from None


def _anchor_paths(raw: dict[str, Any], folder: Path, path_keys: Collection[str]) -> None:
    """Make the relative paths of ``path_keys`` in ``raw`` relative to ``folder``."""

    def anchored(value: Any) -> Any:
        if isinstance(value, str) and value and not Path(value).is_absolute():
            return str(folder / value)
        return value

    for dotted in path_keys:
        section, key = dotted.split(".", 1)
        table = raw.get(section)
        if not isinstance(table, dict) or key not in table:
            continue
        value = table[key]
        table[key] = [anchored(v) for v in value] if isinstance(value, list) else anchored(value)


def _choices(typ: Any, key: str) -> list[str]:
    """The values a Literal-typed ``key`` ("section.key") of ``typ`` accepts, else []."""
    for part in key.split("."):
        try:
            hints = typing.get_type_hints(typ, include_extras=True)
        except (TypeError, NameError):
            return []
        typ = hints.get(part)
        if typ is None:
            return []
    while typing.get_origin(typ) is typing.Annotated:
        typ = typing.get_args(typ)[0]
    if typing.get_origin(typ) is Literal:
        return [str(v) for v in typing.get_args(typ)]
    return []


def _apply_overrides(
    raw: dict[str, Any], environ: Mapping[str, str], prefix: str
) -> dict[str, str]:
    """Merge overrides into ``raw``; return ``{"section.key": "env VAR"}`` for error messages."""
    marker = prefix.upper() + "__"
    origins: dict[str, str] = {}
    for var, value in environ.items():
        if not var.upper().startswith(marker):
            continue
        parts = [p.lower() for p in var[len(marker) :].split("__")]
        if len(parts) != 2 or not all(parts):
            raise SettingsError(f"env {var}: expected {marker}SECTION__KEY")
        section, key = parts
        table = raw.setdefault(section, {})
        if not isinstance(table, dict):
            raise SettingsError(f"env {var}: [{section}] is not a table")
        table[key] = _parse_value(var, value)
        origins[f"{section}.{key}"] = f"env {var}"
    return origins


def _parse_value(var: str, value: str) -> Any:
    """A TOML array or inline table (``["a", "b"]``) is parsed; anything else stays text."""
    if not value.lstrip().startswith(("[", "{")):
        return value
    try:
        return tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"env {var}: not a valid TOML array or table: {exc}") from None
