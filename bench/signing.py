"""Cost of signing and checking commands and manifests, against encoding the command.

Baseline: ``schemas.codec.encode`` of the same command (what every command costs anyway).
Measured: the hub's ``sign_command`` (a deploy signs its manifest, then itself), the node's
check (``edge_node.lifecycle.trust.check``: the command's signature, and a deploy's manifest's),
and the manifest alone. Each figure is the median of ``--repeat`` runs of ``--n`` calls.

    .venv/bin/python -m bench.signing [--n 2000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud_hub.commands.keys import sign_command
from edge_node.lifecycle.trust import check
from schemas.codec import decode, encode
from schemas.messages import Command, Deploy, Ping
from schemas.signing import PublicKey, parse_public_key, public_key_text, sign, verify
from tests.unit.control_harness import WALL, deploy_command, train


def _per_call_us(fn: Callable[[], object], n: int, repeat: int) -> float:
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        runs.append((time.perf_counter() - start) / n * 1e6)
    return statistics.median(runs)


def _row(name: str, us: float, base: float) -> None:
    print(f"{name:<34} {us:9.1f} us   {us / base:7.1f}x encode")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    key = Ed25519PrivateKey.generate()
    trusted = [parse_public_key(public_key_text(key))]
    onnx, manifest = train("2", seed=2)
    ping: Command = Ping(
        node="pump-01", boot="b", seq=1, ts=WALL, id="p", issued_at=WALL, expires_at=WALL + 60
    )
    deploy: Deploy = deploy_command(onnx, manifest)
    for name, command in (("ping", ping), ("deploy", deploy)):
        _command_rows(name, command, key, trusted, n=args.n, r=args.repeat)
    signed_manifest = sign(manifest, key)
    base = _per_call_us(partial(encode, deploy), args.n, args.repeat)
    print("manifest (baseline: encoding its deploy command)")
    _row("manifest sign", _per_call_us(partial(sign, manifest, key), args.n, args.repeat), base)
    verify_us = _per_call_us(partial(verify, signed_manifest, trusted), args.n, args.repeat)
    _row("manifest verify", verify_us, base)


def _command_rows(
    name: str, command: Command, key: Ed25519PrivateKey, trusted: list[PublicKey], *, n: int, r: int
) -> None:
    signed = sign_command(command, key)
    wire = encode(signed)
    plain = len(encode(command))
    print(f"{name}: {plain} bytes encoded, +{len(wire) - plain} bytes of signatures")
    base = _per_call_us(partial(encode, command), n, r)
    _row(f"{name} encode (baseline)", base, base)
    _row(f"{name} decode", _per_call_us(partial(decode, "cmd", wire), n, r), base)
    _row(f"{name} sign (hub)", _per_call_us(partial(sign_command, command, key), n, r), base)
    _row(
        f"{name} check (node)", _per_call_us(partial(check, signed, trusted, {}, WALL), n, r), base
    )


if __name__ == "__main__":
    main()
