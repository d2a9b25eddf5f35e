"""The node as a process: launch to first published reading, resident memory when fresh and
its growth over time at 50 Hz, each beside a baseline measured in the same run.

Baseline: a bare Python process that imports numpy, onnxruntime and paho, opens the same model
with the node's session options, scores one window and publishes one message (what any node
needs at the least). Both are launched alternately ``--rounds`` times against a real Mosquitto;
a subscriber times each one's first message at the broker; the medians are printed.

Fresh memory is read ``--settle-s`` after the node's first reading, for each source kind: ``csv``
(simulated readings replayed from a file, in a loop) and ``sim`` (the pump simulator, which
carries numpy.random and its filter matrices). Growth: one node at ``--rate-hz`` with a real
hub confirming its messages, resident memory sampled every ``--sample-s`` for ``--minutes``
after ``--warmup-s``; the baseline process is sampled beside it.

    .venv/bin/python bench/node_process.py [--rounds 5] [--minutes 30] [--rate-hz 50]
"""

from __future__ import annotations

import argparse
import secrets
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.broker import Broker  # noqa: E402
from tests.integration.processes import Hub  # noqa: E402
from tests.node_process import (  # noqa: E402
    launch_bare,
    launch_node,
    median,
    rss_kb,
    train_sim_model,
)

SOURCES = ("csv", "sim")


def start_and_memory(broker: Broker, work: Path, model: Path, args: argparse.Namespace) -> None:
    """Launch to first message and fresh memory, node against the baseline, in rounds."""
    starts: dict[str, list[float]] = {"bare": [], **{s: [] for s in SOURCES}}
    memory: dict[str, list[float]] = {"bare": [], **{s: [] for s in SOURCES}}
    for r in range(args.rounds):
        bare, bare_kb = launch_bare(broker, "bare", model)
        starts["bare"].append(bare.first_message_s)
        memory["bare"].append(bare_kb / 1000)
        bare.stop()
        for source in SOURCES:
            node = launch_node(
                broker, work, f"n-{source}-{r}", model, rate_hz=args.rate_hz, source=source
            )
            time.sleep(args.settle_s)
            memory[source].append(rss_kb(node.pid) / 1000)
            starts[source].append(node.first_message_s)
            node.stop()
    base_s, base_mb = median(starts["bare"]), median(memory["bare"])
    print(f"launch to first message at the broker, median of {args.rounds} rounds:")
    print(f"  baseline (bare numpy + onnxruntime + paho, model, one publish): {base_s:.3f} s")
    for source in SOURCES:
        s = median(starts[source])
        print(f"  edge-node run, {source} source: {s:.3f} s = {s / base_s:.2f} x baseline")
    print(f"resident memory {args.settle_s:g} s after the first reading, median:")
    print(f"  baseline: {base_mb:.1f} MB")
    for source in SOURCES:
        mb = median(memory[source])
        print(
            f"  edge-node run, {source} source: {mb:.1f} MB = {mb / base_mb:.2f} x baseline "
            f"(+{mb - base_mb:.1f} MB)"
        )


def growth(broker: Broker, work: Path, model: Path, args: argparse.Namespace) -> None:
    """Resident memory of one node at ``rate_hz`` over ``minutes`` after a warm-up."""
    hub = Hub(broker, work / "hub", "bench-hub")
    try:
        hub.wait_ready()
        node = launch_node(broker, work, "n-growth", model, rate_hz=args.rate_hz, source="csv")
        bare, _ = launch_bare(broker, "bare", model)
        try:
            time.sleep(args.warmup_s)
            samples: list[tuple[float, float, float]] = []
            began = time.monotonic()
            while True:
                elapsed = time.monotonic() - began
                samples.append((elapsed, rss_kb(node.pid) / 1000, rss_kb(bare.pid) / 1000))
                if elapsed >= args.minutes * 60:
                    break
                time.sleep(min(args.sample_s, args.minutes * 60 - elapsed + 0.01))
        finally:
            node.stop()
            bare.stop()
    finally:
        hub.stop()
    first, last = samples[0], samples[-1]
    peak = max(s[1] for s in samples)
    print(
        f"memory over {args.minutes:g} min at {args.rate_hz:g} Hz after {args.warmup_s:g} s "
        f"warm-up ({len(samples)} samples, csv source, hub confirming):"
    )
    print(
        f"  edge-node run: {first[1]:.2f} MB -> {last[1]:.2f} MB = {last[1] - first[1]:+.2f} MB "
        f"(highest {peak:.2f} MB)"
    )
    print(f"  baseline:      {first[2]:.2f} MB -> {last[2]:.2f} MB = {last[2] - first[2]:+.2f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rate-hz", type=float, default=50.0)
    parser.add_argument("--settle-s", type=float, default=3.0)
    parser.add_argument("--minutes", type=float, default=30.0, help="0: skip the growth run")
    parser.add_argument("--warmup-s", type=float, default=60.0)
    parser.add_argument("--sample-s", type=float, default=10.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = train_sim_model(work / "model")
        nodes = [f"n-{s}-{r}" for s in SOURCES for r in range(args.rounds)]
        users = {n: secrets.token_urlsafe(12) for n in ("hub", "bare", "n-growth", *nodes)}
        with Broker(work / "mq", users) as broker:
            start_and_memory(broker, work, model, args)
            if args.minutes > 0:
                growth(broker, work, model, args)


if __name__ == "__main__":
    main()
