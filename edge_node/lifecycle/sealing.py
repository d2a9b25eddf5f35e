"""Model files encrypted at rest: AES-256-GCM with the node's key (``security.model_key_file``).

A sealed ``model.onnx`` is ``MAGIC + nonce (12 bytes) + ciphertext and tag``; the associated
data is ``<name>/<version>``, so a sealed file copied into another version's folder does not
open. A file that was altered, sealed with another key, or left in the clear is refused with
the reason; the node then keeps (or falls back to) the model it has. The runtime still checks the
plaintext's sha256 against the manifest at every load.
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path
from typing import Final

MAGIC: Final = b"edgeml-sealed-v1\n"
NONCE_BYTES: Final = 12
KEY_BYTES: Final = 32


class SealError(ValueError):
    """A model file that cannot be opened (or a key that cannot be read); says why."""


def read_key(path: Path) -> bytes:
    """The 32-byte key in ``path`` (base64, one line: ``head -c 32 /dev/urandom | base64``)."""
    where = f"security.model_key_file {path}"
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise SealError(f"{where}: cannot read: {exc}") from None
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise SealError(f"{where}: not base64") from None
    if len(key) != KEY_BYTES:
        raise SealError(f"{where}: {len(key)} bytes, an AES-256 key is {KEY_BYTES}")
    return key


def _aad(model_dir: Path) -> bytes:
    return f"{model_dir.parent.name}/{model_dir.name}".encode()


class ModelSeal:
    """Seals model bytes for one version folder and opens them again."""

    def __init__(self, key: bytes) -> None:
        # Imported here: cryptography's OpenSSL costs a node ~7 MB of memory, and only nodes
        # that keep models encrypted need it.
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self._aead = AESGCM(key)

    def seal(self, data: bytes, model_dir: Path) -> bytes:
        """``data`` encrypted for the version folder ``model_dir``."""
        nonce = os.urandom(NONCE_BYTES)
        return MAGIC + nonce + self._aead.encrypt(nonce, data, _aad(model_dir))

    def open(self, data: bytes, model_dir: Path) -> bytes:
        """The plaintext of a sealed file of ``model_dir``; SealError saying why not."""
        if not data.startswith(MAGIC):
            raise SealError(
                f"{model_dir.parent.name}@{model_dir.name}: model file is not encrypted, "
                "but this node keeps models encrypted (security.model_key_file)"
            )
        from cryptography.exceptions import InvalidTag

        body = data[len(MAGIC) :]
        nonce, sealed = body[:NONCE_BYTES], body[NONCE_BYTES:]
        try:
            return self._aead.decrypt(nonce, sealed, _aad(model_dir))
        except (InvalidTag, ValueError):
            raise SealError(
                f"{model_dir.parent.name}@{model_dir.name}: cannot decrypt the model file: "
                "altered on disk, or sealed with another key (AES-GCM tag mismatch)"
            ) from None

    def is_sealed(self, data: bytes) -> bool:
        """True for bytes written by :meth:`seal`."""
        return data.startswith(MAGIC)
