"""``cloud-hub train``: a model from healthy CSV readings, its card, and optionally an int8 twin.

``--validate FILE`` scores the recipe on labelled recordings first (the protocol of
:mod:`cloud_hub.models.validation`) and writes the figures into the model card.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from cloud_hub.cli.args import UsageError, model_name, model_version, positive_int
from cloud_hub.cli.cards import format_card
from cloud_hub.cli.session import load_config
from cloud_hub.commands.commander import EXIT_OK
from cloud_hub.models.catalog import Catalog
from schemas.manifest import Validation
from schemas.readings_csv import CsvData, read_csv

if TYPE_CHECKING:
    from cloud_hub.models.trainer import TrainConfig

ALGORITHMS = ("pca", "autoencoder", "mset")


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``train`` to ``sub``."""
    train = sub.add_parser("train", parents=[common], help="train a model from healthy CSV data")
    train.add_argument(
        "--csv", type=Path, action="append", required=True, metavar="FILE", help="repeatable"
    )
    train.add_argument("--rows", type=positive_int, metavar="N", help="use the first N rows")
    train.add_argument("--name", required=True, type=model_name, help="model name")
    train.add_argument(
        "--version", type=model_version, help="model version (with --register: the next free)"
    )
    train.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
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
    train.add_argument("--config", type=Path, help="TOML settings file (for the catalog)")
    train.set_defaults(run=run_train)


def run_train(args: argparse.Namespace) -> int:
    """``cloud-hub train``."""
    # Imported here: onnx and onnxruntime are heavy and only this command needs them.
    from cloud_hub.models.onnx_export import int8_variant, save_model, train_model

    if args.version is None and not args.register:
        raise UsageError("--version is required unless --register picks the next free one")
    catalog = Catalog(load_config(args.config).store.models_path()) if args.register else None
    try:
        version = args.version or (catalog.next_version(args.name) if catalog else "1")
        try:
            config = _config(args)
            channels, files = _healthy_readings(args.csv, args.rows)
            values = np.concatenate([data.values for data in files])
            validation = _validation(args.validate, args.validate_rows, config, channels)
            onnx_bytes, manifest = train_model(
                values,
                channels,
                name=args.name,
                version=version,
                trained_by="cloud-hub train",
                config=config,
                now=time.time(),
                sources=[p.name for p in args.csv],
                period_s=files[0].period(str(args.csv[0])) if len(files[0].values) > 1 else None,
                validation=validation,
            )
        except ValueError as exc:  # bad data or parameters; the message names file or field
            raise UsageError(str(exc)) from None
        outputs = [(args.out, onnx_bytes, manifest)]
        if args.int8:
            outputs.append(
                (args.out.with_name(args.out.name + "-int8"), *int8_variant(onnx_bytes, manifest))
            )
        for folder, data, described in outputs:
            save_model(folder, data, described)
            print(f"wrote {folder}\n{format_card(described)}\n")
            if catalog is not None:
                print(f"registered  {catalog.register(folder, time.time()).ref}")
    finally:
        if catalog is not None:
            catalog.close()
    return EXIT_OK


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
