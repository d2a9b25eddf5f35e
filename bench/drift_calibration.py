"""Calibrate and test the drift rule (schemas.drift) on simulated pumps, all in process.

1. A model and its reference profile are trained on healthy pumps (seeds 101..104).
2. The CUSUM threshold ``h`` is chosen on other healthy pumps (the selection set, seeds
   201..): ``margin`` x the largest CUSUM peak any channel or the score reached in any of their
   report intervals. Nothing about the faulty runs enters the choice.
3. False-alarm rate: the fraction of report intervals with a drift alarm on fresh healthy
   pumps (seeds 1..``--pumps``, ``--hours`` each).
4. Detection delay: the simulator's gradual drift fault (an offset growing linearly, in nominal
   SDs per hour) on a channel, from the fault's start to the end of the first alarmed interval.

Readings are generated at ``--rate-hz`` (1 Hz by default: the rule is time-weighted, so it reads
the same at the node's rate) and pass through the node's own DriftAccumulator interval by
interval, with the scores of the same model.

    .venv/bin/python bench/drift_calibration.py [--pumps 20] [--hours 24] [--k 3]

It prints three threshold rules side by side: the trainer's (what a model trained by
``cloud-hub train`` carries), per column from the selection pumps, and one h for all columns.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cloud_hub.models.reference import drift_spec, reference_profile  # noqa: E402
from cloud_hub.models.trainer import TrainConfig, fit, score_numpy, sliding_windows  # noqa: E402
from edge_node.scoring.drift import DriftAccumulator  # noqa: E402
from edge_node.sources import Fault, PumpSimulator  # noqa: E402
from schemas.drift import DEFAULT_MARGIN, SCORE, DriftSpec  # noqa: E402
from schemas.manifest import ReferenceProfile  # noqa: E402

F32 = NDArray[np.float32]
DRIFT_START_H = 2.0


def simulate(seed: int, hours: float, rate_hz: float, faults: tuple[Fault, ...] = ()) -> F32:
    """``hours`` of one pump's readings."""
    sim = PumpSimulator(seed=seed, rate_hz=rate_hz, speed=0, wall_start=0.0, faults=faults)
    return sim.read(int(hours * 3600 * rate_hz)).values


class Model:
    """The trained model's scorer and reference profile."""

    def __init__(self, rate_hz: float, hours: float, k: float) -> None:
        parts = [simulate(s, hours, rate_hz) for s in (101, 102, 103, 104)]
        train = np.concatenate(parts)
        self.channels = PumpSimulator(seed=0, wall_start=0.0).channels
        self.fitted = fit(train, self.channels, TrainConfig())
        w = self.fitted.window
        self.reference: ReferenceProfile = reference_profile(
            train, self.scores(train)[w - 1 :], self.channels
        )
        # What onnx_export.train_model puts in the manifest: the trainer's fitted thresholds.
        self.spec = drift_spec(
            train,
            self.scores(train)[w - 1 :],
            self.reference,
            self.channels,
            1 / rate_hz,
            k=k,
        )

    def scores(self, values: F32) -> F32:
        """One score per reading; NaN until the first full window (the node pads instead)."""
        scored = score_numpy(self.fitted, sliding_windows(values, self.fitted.window))[0]
        return np.concatenate([np.full(len(values) - len(scored), np.nan, np.float32), scored])


def peaks(model: Model, values: F32, k: float, rate_hz: float, interval_s: float) -> Any:
    """Per report interval, the CUSUM peak (SD x s) of each channel and the score: [I, C+1]."""
    scores = model.scores(values)
    acc = DriftAccumulator(model.reference, model.channels, spec=DriftSpec(k=k, default_h=1.0))
    step, period = int(interval_s * rate_hz), 1.0 / rate_hz
    out = []
    for i in range(0, len(values) - step + 1, step):
        flags = np.zeros(step, dtype=bool)
        acc.add(i * period, period, values[i : i + step], scores[i : i + step], flags)
        report = acc.report()
        assert report is not None
        out.append([c.change for c in report.channels] + [report.score.change])
    return np.array(out)


def alarm_rate(peaks_by_pump: list[Any], h: Any) -> tuple[float, int, int]:
    """(fraction of intervals with an alarm, alarmed intervals, pumps with any alarm)."""
    alarms = np.concatenate([(p >= h).any(axis=1) for p in peaks_by_pump])
    pumps = sum(bool((p >= h).any()) for p in peaks_by_pump)
    return float(alarms.mean()), int(alarms.sum()), pumps


def delay_minutes(p: Any, h: Any, interval_s: float) -> float:
    """From the drift's start to the end of the first alarmed interval after it (inf if none)."""
    hit = np.flatnonzero((p >= h).any(axis=1))
    after = hit[(hit + 1) * interval_s > DRIFT_START_H * 3600]
    return float((after[0] + 1) * interval_s / 60 - DRIFT_START_H * 60) if after.size else np.inf


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pumps", type=int, default=20, help="healthy pumps for the FAR")
    parser.add_argument("--select", type=int, default=10, help="healthy pumps choosing h")
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--train-hours", type=float, default=6.0, help="per training pump")
    parser.add_argument("--rate-hz", type=float, default=1.0)
    parser.add_argument("--interval", type=float, default=60.0, help="report interval, s")
    parser.add_argument("--k", type=float, default=DriftSpec().k, help="CUSUM allowance, SD")
    parser.add_argument("--margin", type=float, default=1.5, help="selection h / healthy max")
    parser.add_argument("--channels", nargs="+", default=["pressure", "current", "thermocouple"])
    parser.add_argument(
        "--rates",
        nargs="+",
        type=float,
        default=[0.5, 1.0, 2.0, 4.0],
        help="drift rates, nominal SDs per hour",
    )
    parser.add_argument("--faulty", type=int, default=3, help="pumps per drift rate")
    args = parser.parse_args()
    start = time.perf_counter()
    model = Model(args.rate_hz, args.train_hours, args.k)
    run = (args.k, args.rate_hz, args.interval)
    names = [*model.channels, SCORE]

    select = [
        peaks(model, simulate(200 + s, args.hours, args.rate_hz), *run)
        for s in range(1, args.select + 1)
    ]
    worst = np.max([p.max(axis=0) for p in select], axis=0)
    rules = {
        "trainer": np.array([model.spec.h(n) for n in names]),
        "selection": np.maximum(args.margin * worst, 10 * args.k),
        "one h": np.full(len(names), args.margin * worst.max()),
    }
    print(f"CUSUM k = {args.k:g} SD, report interval {args.interval:g} s, {args.rate_hz:g} Hz")
    print("thresholds h (SD*s) per column:")
    print(f"  {'rule':10} " + " ".join(f"{n[:12]:>12}" for n in names))
    for rule, h in rules.items():
        print(f"  {rule:10} " + " ".join(f"{x:12.0f}" for x in h))
    print(
        f"  trainer = the manifest's: {DEFAULT_MARGIN:g} x the largest CUSUM on the training "
        f"readings (4 pumps x {args.train_hours:g} h), at least k x each column's decorrelation "
        f"time; selection = {args.margin:g} x the largest on "
        f"{args.select} other healthy pumps x {args.hours:g} h; one h = the largest of those"
    )

    healthy = [
        peaks(model, simulate(s, args.hours, args.rate_hz), *run) for s in range(1, args.pumps + 1)
    ]
    intervals = sum(len(p) for p in healthy)
    print(
        f"\nfalse alarms on fresh healthy pumps ({args.pumps} x {args.hours:g} h = "
        f"{intervals} intervals):"
    )
    for rule, h in rules.items():
        far, count, pumps = alarm_rate(healthy, h)
        watch = alarm_rate(healthy, DriftSpec().watch * h)[0]
        print(
            f"  {rule:10} alarm in {far:.3%} of intervals ({count}), on {pumps} of "
            f"{args.pumps} pumps; watch or alarm in {watch:.3%}"
        )

    print(
        f"\ndetection delay (minutes, median of {args.faulty} pumps; '-' = not within "
        f"{args.hours - DRIFT_START_H:g} h) of a gradual drift from {DRIFT_START_H:g} h on, "
        "rate in nominal SDs per hour"
    )
    header = " ".join(f"{f'{c[:10]}/{r}':>16}" for c in args.channels for r in ("trainer", "sel"))
    print(f"  {'SD/h':>5} {header}")
    for rate in args.rates:
        cells = []
        for channel in args.channels:
            span = args.hours - DRIFT_START_H
            fault = Fault("drift", channel, DRIFT_START_H * 3600, span * 3600, rate * span)
            runs = [
                peaks(model, simulate(300 + s, args.hours, args.rate_hz, (fault,)), *run)
                for s in range(1, args.faulty + 1)
            ]
            for rule in ("trainer", "selection"):
                median = float(
                    np.median([delay_minutes(p, rules[rule], args.interval) for p in runs])
                )
                cells.append(f"{median:16.0f}" if np.isfinite(median) else f"{'-':>16}")
        print(f"  {rate:5g} " + " ".join(cells))
    print(f"\n({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
