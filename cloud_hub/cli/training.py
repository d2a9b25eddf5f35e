"""``cloud-hub train``: a model from healthy CSV readings, its card, and optionally an int8 twin.

``--validate FILE`` scores the recipe on labelled recordings first (the protocol of
:mod:`cloud_hub.models.validation`) and writes the figures into the model card.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from cloud_hub.cli.args import UsageError, model_name, model_version, positive_int
from cloud_hub.cli.cards import format_card
from cloud_hub.cli.session import load_config
from cloud_hub.commands.commander import EXIT_OK
from cloud_hub.config import HubConfig
from cloud_hub.models.capture_store import RESULT_FILE, load_capture
from cloud_hub.models.captures import CaptureData
from cloud_hub.models.catalog import MAX_REFERENCE, Catalog, Reference
from schemas.manifest import Validation
from schemas.readings_csv import CsvData, read_csv
from schemas.topics import TopicError, check_id

if TYPE_CHECKING:
    from cloud_hub.models.trainer import TrainConfig

log = logging.getLogger(__name__)

ALGORITHMS = ("pca", "autoencoder", "mset")


def capture_id(text: str) -> str:
    """A command id as a --capture value (it names a folder, so no path tricks)."""
    try:
        return check_id(text, "capture id")
    except TopicError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``train`` to ``sub``."""
    train = sub.add_parser("train", parents=[common], help="train a model from healthy CSV data")
    source = train.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--csv", type=Path, action="append", metavar="FILE", help="healthy readings (repeatable)"
    )
    source.add_argument(
        "--capture",
        type=capture_id,
        metavar="ID",
        help="readings a node captured for the retrain command ID (kept by cloud-hub serve)",
    )
    train.add_argument("--rows", type=positive_int, metavar="N", help="use the first N rows")
    train.add_argument("--name", required=True, type=model_name, help="model name")
    train.add_argument(
        "--version", type=model_version, help="model version (with --register: the next free)"
    )
    train.add_argument(
        "--out", type=Path, metavar="DIR", help="output folder (optional with --capture --register)"
    )
    train.add_argument(
        "--algorithm", choices=ALGORITHMS, default="pca", help="detector family (default pca)"
    )
    train.add_argument("--window", type=positive_int, metavar="W", help="readings per window")
    train.add_argument(
        "--target-far",
        type=float,
        metavar="F",
        help="share of held-out healthy scores above the threshold before the margin",
    )
    train.add_argument("--margin", type=float, metavar="M", help="threshold multiplier")
    train.add_argument(
        "--validate",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="labelled CSV to score the recipe on (repeatable); figures go into the card",
    )
    train.add_argument(
        "--validate-rows",
        type=positive_int,
        default=400,
        metavar="N",
        help="healthy rows at the start of each --validate file to fit on (default 400)",
    )
    train.add_argument("--int8", action="store_true", help="also write DIR-int8 (int8 weights)")
    train.add_argument("--register", action="store_true", help="add the model to the catalog")
    train.add_argument(
        "--config", type=Path, help="TOML settings file (for the catalog and the captures)"
    )
    train.set_defaults(run=run_train)


def run_train(args: argparse.Namespace) -> int:
    """``cloud-hub train``."""
    # Imported here: onnx and onnxruntime are heavy and only this command needs them.
    from cloud_hub.models.onnx_export import int8_variant, save_model, train_model

    if args.version is None and not args.register:
        raise UsageError("--version is required unless --register picks the next free one")
    if args.out is None and (args.csv or not args.register or args.int8):
        raise UsageError("--out DIR is required (only --capture with --register may omit it)")
    hub = load_config(args.config) if args.register or args.capture else None
    catalog = Catalog(hub.store.models_path()) if hub is not None and args.register else None
    try:
        version = args.version or (catalog.next_version(args.name) if catalog else "1")
        try:
            config = _config(args)
            readings = _readings(args, hub)
            validation = _validation(args.validate, args.validate_rows, config, readings.channels)
            onnx_bytes, manifest = train_model(
                readings.values,
                readings.channels,
                name=args.name,
                version=version,
                trained_by=readings.trained_by,
                config=config,
                now=time.time(),
                sources=readings.sources,
                period_s=readings.period,
                validation=validation,
            )
        except ValueError as exc:  # bad data or parameters; the message names file or field
            raise UsageError(str(exc)) from None
        if args.out is None and catalog is not None:
            entry = catalog.add(onnx_bytes, manifest, time.time(), source=readings.trained_by)
            _keep_reference(catalog, entry.name, entry.version, readings)
            print(f"{format_card(manifest)}\n\nregistered  {entry.ref}")
            return EXIT_OK
        outputs = [(args.out, onnx_bytes, manifest)]
        if args.int8:
            outputs.append(
                (args.out.with_name(args.out.name + "-int8"), *int8_variant(onnx_bytes, manifest))
            )
        for folder, data, described in outputs:
            save_model(folder, data, described)
            print(f"wrote {folder}\n{format_card(described)}\n")
            if catalog is not None:
                entry = catalog.register(folder, time.time())
                _keep_reference(catalog, entry.name, entry.version, readings)
                print(f"registered  {entry.ref}")
    finally:
        if catalog is not None:
            catalog.close()
    return EXIT_OK


def _keep_reference(catalog: Catalog, name: str, version: str, readings: Readings) -> None:
    """The healthy readings a registered model was trained on are its reference (what the
    retrain loop checks a candidate against); the newest MAX_REFERENCE of them."""
    values = readings.values[-MAX_REFERENCE:]
    catalog.keep_reference(
        name, version, Reference(readings.channels, readings.period or 0.0, values)
    )


@dataclass(frozen=True)
class Readings:
    """What a model is trained on, and how its card names where it came from."""

    channels: list[str]
    values: NDArray[np.float32]
    sources: list[str]
    trained_by: str
    period: float | None


def _readings(args: argparse.Namespace, hub: HubConfig | None) -> Readings:
    """The healthy readings of the ``--csv`` files or of the ``--capture``."""
    if args.capture is None or hub is None:
        channels, files = _healthy_readings(args.csv, args.rows)
        period = files[0].period(str(args.csv[0])) if len(files[0].values) > 1 else None
        values = np.concatenate([data.values for data in files])
        return Readings(channels, values, [p.name for p in args.csv], "cloud-hub train", period)
    data = read_capture(hub.store.captures_path(), args.capture)
    values = data.values[: args.rows] if args.rows is not None else data.values
    finite = values[np.isfinite(values).all(axis=1)]
    if len(finite) < len(values):
        log.warning("dropped %d readings with missing values", len(values) - len(finite))
    return Readings(
        data.channels,
        finite,
        [f"capture {data.command} from {data.node}"],
        f"cloud-hub train --capture {data.command} (from {data.node})",
        data.period if data.period > 0 else None,
    )


def read_capture(root: Path, command: str) -> CaptureData:
    """The complete capture of ``command`` under ``root``; ValueError saying what is missing."""
    folder = root / command
    if not folder.is_dir():
        known = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        shown = ", ".join(known[-5:]) or "none"
        raise ValueError(f"no capture {command} in {root} (newest there: {shown})")
    path = folder / RESULT_FILE
    if not path.exists():
        parts = len(list(folder.glob("chunk-*.msgpack")))
        raise ValueError(
            f"capture {command} is incomplete: {parts} chunks arrived so far; "
            "cloud-hub serve writes it once the last one is in"
        )
    try:
        return load_capture(path)
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"{path}: unreadable capture: {exc}") from None


def _config(args: argparse.Namespace) -> TrainConfig:
    from cloud_hub.models.trainer import DEFAULTS

    config = DEFAULTS[args.algorithm]
    changes = {
        key: value
        for key, value in (
            ("window", args.window),
            ("target_far", args.target_far),
            ("margin", args.margin),
        )
        if value is not None
    }
    return replace(config, **changes)  # TrainConfig checks the values


def _validation(
    files: Sequence[Path], rows: int, config: TrainConfig, channels: list[str]
) -> Validation | None:
    if not files:
        return None
    from cloud_hub.models.validation import Labelled, validate

    recordings = []
    for path in files:
        data = read_csv(path)
        if data.anomaly is None:
            raise ValueError(f"{path}: no 'anomaly' column to validate against")
        if data.channels != channels:
            raise ValueError(f"{path}: channels {data.channels} differ from {channels}")
        recordings.append(Labelled(path.name, data.values, data.anomaly))
    summary, _ = validate(recordings, config, channels, rows)
    return summary


def _healthy_readings(files: Sequence[Path], rows: int | None) -> tuple[list[str], list[CsvData]]:
    """Each file's readings (the first ``rows`` if given); refuse labelled anomalies."""
    channels: list[str] | None = None
    parts: list[CsvData] = []
    for path in files:
        data = read_csv(path)
        if channels is None:
            channels = data.channels
        elif data.channels != channels:
            raise ValueError(f"{path}: channels {data.channels} differ from {channels}")
        end = len(data.values) if rows is None else min(rows, len(data.values))
        if data.anomaly is not None and data.anomaly[:end].any():
            first = int(data.anomaly[:end].argmax())
            raise ValueError(
                f"{path}: reading {first} of the {end} used is labelled anomalous; "
                "train on healthy data only (use --rows to take the healthy start)"
            )
        parts.append(_head(data, end))
    if channels is None:
        raise ValueError("no --csv file given")
    return channels, parts


def _head(data: CsvData, rows: int) -> CsvData:
    values: NDArray[np.float32] = data.values[:rows]
    return CsvData(data.channels, data.timestamps[:rows], values, None)
