"""TOML settings with environment overrides, shared by edge-node and cloud-hub.

An override ``{PREFIX}__{SECTION}__{KEY}=value`` replaces ``[section] key`` (names are
case-insensitive; values are converted to the key's type; a list is written as a TOML array,
``'["a", "b"]'``). A bad file or value raises
:class:`SettingsError` naming the key and where it came from.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import msgspec

T = TypeVar("T")
_PATH = re.compile(r" - at `\$\.?([^`]*)`$")


class SettingsError(ValueError):
    """A settings file or override that cannot be used; the message names key and source."""


def load_settings(
    typ: type[T],
    path: Path | None,
    environ: Mapping[str, str],
    prefix: str,
) -> T:
    """Read ``path`` (optional), apply ``{prefix}__SECTION__KEY`` overrides, validate as ``typ``."""
    raw: dict[str, Any] = {}
    source = str(path) if path else "defaults"
    if path is not None:
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise SettingsError(f"{path}: cannot read settings: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"{path}: not valid TOML: {exc}") from None
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
        origin = overridden.get(key, source)
        raise SettingsError(f"{origin}: key {key or '(top level)'}: {text}") from None


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
