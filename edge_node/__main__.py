"""``edge-node run [--config node.toml]`` and ``edge-node simulate``.

Options follow cloud-hub's conventions: ``--log-level`` after the subcommand (also accepted
before it), ``--config`` on the subcommand that reads settings, exit 2 for the user's mistakes.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType

import numpy as np

from edge_node.config import CONFIG_ENV, PREFIX, SYSTEM_CONFIG, load_config
from edge_node.lifecycle.model_store import StoreError
from edge_node.scoring.pipeline import ChannelMismatch
from edge_node.scoring.runtime import ModelError
from edge_node.sources.base import SourceError
from edge_node.sources.simulator import PumpSimulator, parse_fault
from schemas.readings_csv import write_csv
from schemas.settings import SettingsError, find_settings

log = logging.getLogger("edge_node")
LOG_LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR"]


def _log_level(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument(
        "--log-level",
        default=default,
        type=str.upper,
        choices=LOG_LEVELS,
        help="logging level (default INFO)",
    )


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv``, set up logging, run the subcommand; return the exit code."""
    parser = argparse.ArgumentParser(prog="edge-node", description="edgeml edge node")
    _log_level(parser, "INFO")
    # After the subcommand too, as in cloud-hub; it wins over one given before.
    common = argparse.ArgumentParser(add_help=False)
    _log_level(common, argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run", parents=[common], help="score the sensor stream and publish the results"
    )
    run.add_argument(
        "--config",
        type=Path,
        help=f"TOML settings file (default: ${CONFIG_ENV}, then {SYSTEM_CONFIG}); "
        f"{PREFIX}__SECTION__KEY variables override it",
    )
    run.add_argument(
        "--exit-when-drained",
        action="store_true",
        help="stop once a finite source is done and the hub has confirmed everything",
    )
    sim = sub.add_parser(
        "simulate", parents=[common], help="write simulated pump readings to a SKAB-style CSV"
    )
    sim.add_argument("--out", type=Path, required=True)
    sim.add_argument("--seconds", type=float, default=3600.0, help="stream time to simulate")
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--rate-hz", type=float, default=1.0)
    sim.add_argument(
        "--fault", action="append", default=[], help="kind:channel:start:duration[:mag]"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        if args.command == "simulate":
            return _simulate(args.out, args.seconds, args.seed, args.rate_hz, args.fault)
        return _run(args.config, args.exit_when_drained)
    except (SettingsError, SourceError, ModelError, StoreError, ChannelMismatch) as exc:
        print(f"edge-node {args.command}: {exc}", file=sys.stderr)
        return 2


def _run(config_path: Path | None, exit_when_drained: bool) -> int:
    from edge_node.wiring import build_node

    found = find_settings(config_path, os.environ, CONFIG_ENV, SYSTEM_CONFIG)
    if found.path is None and f"{PREFIX}__NODE__ID" not in os.environ:
        raise SettingsError(
            f"{found.how}; and {PREFIX}__NODE__ID is not set. Give --config FILE, set "
            f"{CONFIG_ENV}=FILE or write {SYSTEM_CONFIG} (deploy/host/node.toml is an example)"
        )
    log.info("settings: %s", found.how)
    node = build_node(load_config(found.path, os.environ))
    _release_startup_memory()
    stop = threading.Event()

    def _stop(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    node.run(stop, exit_when_drained=exit_when_drained)
    return 0


def _release_startup_memory() -> None:
    """Hand the heap that start-up used and freed (settings, model bytes, CSV parsing) back to
    the system: glibc keeps freed memory mapped, and a node's resident memory is a budget.
    Elsewhere (no glibc) this does nothing."""
    gc.collect()
    try:
        libc = ctypes.CDLL(None)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return
    trim(0)


def _simulate(out: Path, seconds: float, seed: int, rate_hz: float, faults: list[str]) -> int:
    start = time.time() - seconds
    sim = PumpSimulator(
        seed=seed,
        rate_hz=rate_hz,
        speed=0,
        wall_start=start,
        faults=[parse_fault(f) for f in faults],
        max_block=4096,
    )
    total = int(seconds * rate_hz)
    parts: list[np.ndarray] = []
    got = 0
    while got < total:
        block = sim.poll(0.0)
        if block is None:
            break
        parts.append(block.values[: total - got])
        got += len(parts[-1])
    write_csv(out, sim.channels, start, 1.0 / rate_hz, np.concatenate(parts))
    print(f"wrote {got} readings of {len(sim.channels)} channels to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
