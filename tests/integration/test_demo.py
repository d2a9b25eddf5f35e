"""The demo command: it starts everything, shows the fleet, and Ctrl-C stops every process."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TextIO

import psutil
import pytest

pytestmark = pytest.mark.integration

DEMO = Path(__file__).resolve().parents[2] / "scripts" / "demo.py"


def test_demo_shows_the_fleet_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    log = (tmp_path / "demo.out").open("w+")
    demo = subprocess.Popen(
        [sys.executable, str(DEMO), "--plain", "--workdir", str(work)],
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and _output(log).count("pump-3  online") < 2:
            assert demo.poll() is None, _output(log)
            time.sleep(0.5)
        out = _output(log)
        assert out.count("pump-3  online") >= 2, out
        children = psutil.Process(demo.pid).children(recursive=True)
        commands = " ".join(" ".join(p.cmdline()) for p in children)
        assert "cloud-hub serve" in commands and commands.count("edge-node run") == 3
        demo.send_signal(signal.SIGINT)
        assert demo.wait(30) == 0
    finally:
        if demo.poll() is None:
            demo.kill()
        log.close()
    out = (tmp_path / "demo.out").read_text()
    assert "metrics: http://127.0.0.1:" in out and "readings/s" in out
    # Nodes first, with nothing left unsent, then the hub once it applied everything, then the
    # broker; the table had a clock and said the hub was alive.
    order = [
        out.index("nodes stopped; left in their outboxes: nothing"),
        out.index("hub applied everything delivered"),
        out.index("stopped broker, hub and nodes"),
    ]
    assert order == sorted(order), out[-2000:]
    assert re.search(r"^\d\d:\d\d:\d\d  t = .* hub alive, counted \d+ readings", out, re.M)
    assert not [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def _output(log: TextIO) -> str:
    log.seek(0)
    return log.read()
