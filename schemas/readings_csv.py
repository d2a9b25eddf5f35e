"""The readings CSV format (SKAB-style): ``;``-separated, a ``datetime`` column, sensor columns.

Shared file format: the node replays it, the hub trains from it, the benchmarks score it, so
every part of the project reads and writes one format through this module.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

_NON_ALNUM = re.compile(r"[^a-z0-9]+")


class CsvFormatError(ValueError):
    """A readings file cannot be read: the message names the file and the bad line or column."""


def normalise_channel(name: str) -> str:
    """Lowercase, runs of non-alphanumerics to "_", no leading or trailing "_"."""
    return _NON_ALNUM.sub("_", name.strip().lower()).strip("_")


def median(values: NDArray[np.float64]) -> float:
    """``np.median`` of 1-D float values, NaN if any is NaN (or there are none), without the
    import of numpy.ma that np.median makes (16 ms and 1.4 MB when a node starts)."""
    if values.size == 0:
        return math.nan
    ordered = np.sort(values)
    middle = values.size // 2
    if math.isnan(ordered[-1]):  # NaN sorts last
        return math.nan
    if values.size % 2:
        return float(ordered[middle])
    return float((ordered[middle - 1] + ordered[middle]) / 2.0)  # np.median's mean of two


DATETIME_COLUMN = "datetime"
LABEL_COLUMNS = frozenset({"anomaly", "changepoint"})
DELIMITER = ";"


@dataclass(frozen=True)
class CsvData:
    """One file's contents: normalised channel names, unix timestamps, readings and labels."""

    channels: list[str]
    timestamps: NDArray[np.float64]
    values: NDArray[np.float32]
    anomaly: NDArray[np.bool_] | None

    def period(self, source: str = "data") -> float:
        """Median spacing of the timestamps in seconds; CsvFormatError naming ``source`` if none."""
        if self.timestamps.size < 2:
            raise CsvFormatError(f"{source}: needs at least 2 readings to infer the period")
        period = median(np.diff(self.timestamps))
        if not (math.isfinite(period) and period > 0):
            raise CsvFormatError(
                f"{source}: datetime column does not increase (median step {period})"
            )
        return period


def read_csv(path: Path | str) -> CsvData:
    """Read a SKAB-format file; CsvFormatError names the file and the bad line or column."""
    path = Path(path)
    header, lines, rows = _read_rows(path)
    names = [normalise_channel(name) for name in header]
    _check_header(path, header, names)
    if not rows:
        raise CsvFormatError(f"{path}: no readings after the header")
    table = np.array(rows, dtype=str)
    timestamps = _parse_datetimes(path, lines, table[:, names.index(DATETIME_COLUMN)])
    channel_idx = [i for i, name in enumerate(names) if _is_channel(name)]
    values = _parse_numbers(path, lines, table[:, channel_idx], [header[i] for i in channel_idx])
    anomaly = None
    if "anomaly" in names:
        i = names.index("anomaly")
        labels = _parse_numbers(path, lines, table[:, [i]], [header[i]])[:, 0]
        anomaly = labels >= 0.5
    return CsvData(
        channels=[names[i] for i in channel_idx],
        timestamps=timestamps,
        values=values.astype(np.float32),
        anomaly=anomaly,
    )


def write_csv(
    path: Path | str,
    channels: Sequence[str],
    t0: float,
    period: float,
    values: NDArray[np.float32],
    *,
    anomaly: NDArray[np.bool_] | None = None,
) -> None:
    """Write readings in SKAB format (UTC datetimes; NaN as an empty cell).

    Datetimes are whole seconds ("%Y-%m-%d %H:%M:%S", ``t0`` rounded down) when ``period`` is
    whole seconds; otherwise they carry microseconds so that the period survives a round trip.
    """
    values = np.asarray(values, dtype=np.float32)
    if values.ndim != 2 or values.shape[1] != len(channels):
        raise ValueError(f"values have shape {values.shape}, expected [n, {len(channels)}]")
    if anomaly is not None and len(anomaly) != len(values):
        raise ValueError(f"anomaly has {len(anomaly)} labels for {len(values)} readings")
    whole = float(period).is_integer()
    start = math.floor(t0) if whole else t0
    micros = np.round((start + np.arange(len(values)) * period) * 1e6).astype(np.int64)
    stamps = np.datetime_as_string(micros.astype("datetime64[us]"), unit="s" if whole else "us")
    cells = np.char.mod("%.9g", values)
    cells[np.isnan(values)] = ""
    columns = [DATETIME_COLUMN, *channels]
    if anomaly is not None:
        columns.append("anomaly")
        cells = np.column_stack([cells, np.where(anomaly, "1", "0")])
    body = [
        f"{str(stamp).replace('T', ' ')}{DELIMITER}{DELIMITER.join(row)}"
        for stamp, row in zip(stamps, cells.tolist(), strict=True)
    ]
    Path(path).write_text("\n".join([DELIMITER.join(columns), *body]) + "\n", encoding="utf-8")


def _is_channel(name: str) -> bool:
    return name != DATETIME_COLUMN and name not in LABEL_COLUMNS


def _read_rows(path: Path) -> tuple[list[str], list[int], list[list[str]]]:
    """Header, the line number of each data row, and the data rows (blank lines skipped)."""
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            reader = csv.reader(handle, delimiter=DELIMITER)
            header: list[str] | None = None
            lines: list[int] = []
            rows: list[list[str]] = []
            for row in reader:
                if not row or all(not cell.strip() for cell in row):
                    continue
                cells = [cell.strip() for cell in row]
                if header is None:
                    header = cells
                    continue
                if len(cells) != len(header):
                    raise CsvFormatError(
                        f"{path}: line {reader.line_num}: {len(cells)} fields, "
                        f"the header has {len(header)}"
                    )
                lines.append(reader.line_num)
                rows.append(cells)
    except OSError as exc:
        raise CsvFormatError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise CsvFormatError(f"{path}: not a readable CSV file: {exc}") from None
    if header is None:
        raise CsvFormatError(f"{path}: empty file (no header)")
    return header, lines, rows


def _check_header(path: Path, header: list[str], names: list[str]) -> None:
    if DATETIME_COLUMN not in names:
        raise CsvFormatError(f"{path}: line 1: no {DATETIME_COLUMN!r} column in header {header}")
    seen: dict[str, str] = {}
    for raw, name in zip(header, names, strict=True):
        if not name:
            raise CsvFormatError(f"{path}: line 1: column {raw!r} has no usable name")
        if name in seen:
            raise CsvFormatError(
                f"{path}: line 1: columns {seen[name]!r} and {raw!r} both normalise to {name!r}"
            )
        seen[name] = raw
    if not any(_is_channel(name) for name in names):
        raise CsvFormatError(f"{path}: line 1: no sensor columns in header {header}")


def _parse_datetimes(path: Path, lines: list[int], column: NDArray[np.str_]) -> NDArray[np.float64]:
    """Unix seconds of naive datetimes taken as UTC."""
    try:
        stamps = column.astype("datetime64[us]")
    except ValueError:
        stamps = None
    if stamps is None or np.isnat(stamps).any():
        for line, cell in zip(lines, column.tolist(), strict=True):
            if not _is_datetime(cell):
                raise CsvFormatError(
                    f"{path}: line {line}, column {DATETIME_COLUMN!r}: {cell!r} is not a datetime"
                )
        raise CsvFormatError(f"{path}: column {DATETIME_COLUMN!r} could not be parsed")
    return stamps.astype(np.int64).astype(np.float64) / 1e6


def _is_datetime(cell: str) -> bool:
    try:
        return not np.isnat(np.datetime64(cell, "us"))
    except ValueError:
        return False


def _parse_numbers(
    path: Path, lines: list[int], table: NDArray[np.str_], header: list[str]
) -> NDArray[np.float64]:
    """Floats of a string table; an empty cell is a missing reading (NaN)."""
    table = np.where(table == "", "nan", table)
    try:
        return table.astype(np.float64)
    except ValueError:
        pass
    for line, row in zip(lines, table.tolist(), strict=True):
        for name, cell in zip(header, row, strict=True):
            try:
                float(cell)
            except ValueError:
                raise CsvFormatError(
                    f"{path}: line {line}, column {name!r}: {cell!r} is not a number"
                ) from None
    raise CsvFormatError(f"{path}: numeric columns could not be parsed")
