"""The hub's Ed25519 signing key: made by ``cloud-hub keygen``, read by every CLI command.

The private key is PKCS#8 PEM, created mode 0600 and never overwritten; the public key goes
beside it as ``<key>.pub``, one base64 line to paste into each node's ``security.hub_keys``.
What is signed and how is in :mod:`schemas.signing`.
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)

from schemas.messages import Command, Deploy, Shadow
from schemas.signing import public_key_text, sign


class SigningKeyError(RuntimeError):
    """A key file that cannot be written or read; the message names the file."""


def public_path(key: Path) -> Path:
    """Where the public key of ``key`` is written: ``<key>.pub``."""
    return key.with_name(key.name + ".pub")


def generate(key: Path) -> str:
    """Write a new private key to ``key`` (0600) and its public key beside it; the public text.

    An existing key is never replaced: rotating means a new file, trusted by the nodes beside
    the old one until every node has it (docs/ARCHITECTURE.md, "Signed commands").
    """
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    key.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise SigningKeyError(f"{key}: exists; a new key needs a new file (key rotation)") from None
    except OSError as exc:
        raise SigningKeyError(f"{key}: cannot create the key: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    text = public_key_text(private)
    public_path(key).write_text(text + "\n", encoding="utf-8")
    return text


def load(key: Path) -> Ed25519PrivateKey:
    """The private key in ``key``; SigningKeyError naming the file if it is missing or not one."""
    try:
        data = key.read_bytes()
    except OSError as exc:
        raise SigningKeyError(f"security.signing_key: cannot read {key}: {exc.strerror}") from None
    try:
        private = load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        what = f"security.signing_key: {key} is not a PEM private key"
        raise SigningKeyError(f"{what}: {exc}") from None
    if not isinstance(private, Ed25519PrivateKey):
        raise SigningKeyError(f"security.signing_key: {key} is not an Ed25519 key")
    return private


def sign_command(command: Command, private: Ed25519PrivateKey) -> Command:
    """``command`` signed; a deploy's manifest is signed first, so both carry the hub's word."""
    if isinstance(command, Deploy | Shadow):
        command = msgspec.structs.replace(command, manifest=sign(command.manifest, private))
    return sign(command, private)
