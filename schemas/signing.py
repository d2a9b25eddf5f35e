"""Ed25519 signatures over commands and model manifests (pure; both processes import it).

What is signed is a *canonical encoding*: the message as MessagePack with its ``signature``
field emptied, maps in sorted key order (``order="deterministic"``), behind a domain prefix
that says what kind of thing it is, so a signature over a manifest can never pass for one over
a command. The signer and the checker build it from the same struct, so it does not depend on
how the message travelled (JSON on disk, MessagePack on the wire). Fields at their default value
are left out of it, so a field a newer hub adds (with a default, as every added field has)
changes nothing for an older node while it is unused; a message that uses it cannot be checked
by a node that does not know it, and is refused.

Keys are raw 32-byte Ed25519 public keys, written as base64 in settings; a key's id is the
first 8 bytes of its SHA-256 in hex, short enough to name in a log line.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, TypeVar

import msgspec

from schemas.manifest import Manifest
from schemas.messages import Command

# cryptography is imported where a signature is made or checked, not with this module: its
# OpenSSL costs ~7 MB of memory, which a node would otherwise pay from start-up although it
# checks a signature only when a command arrives.
if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

COMMAND_DOMAIN: Final = b"edgeml/v1 command\x00"
MANIFEST_DOMAIN: Final = b"edgeml/v1 manifest\x00"
SIGNATURE_BYTES: Final = 64

_canonical = msgspec.msgpack.Encoder(order="deterministic")
Signed = TypeVar("Signed", bound=Command | Manifest)


class SignatureError(ValueError):
    """A signature that does not check out; the message says why, for an ack or a log line."""


@dataclass(frozen=True)
class PublicKey:
    """A trusted hub key (raw 32 bytes) and its short id."""

    raw: bytes
    key_id: str


def key_id(raw: bytes) -> str:
    """The short id of a raw public key: 16 hex digits of its SHA-256."""
    return hashlib.sha256(raw).hexdigest()[:16]


def parse_public_key(text: str, where: str = "key") -> PublicKey:
    """A base64 raw Ed25519 public key; ValueError naming ``where`` if it is not one."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{where}: not base64") from None
    if len(raw) != 32:
        raise ValueError(f"{where}: an Ed25519 public key is 32 bytes, this is {len(raw)}")
    return PublicKey(raw, key_id(raw))


def public_key_text(private: Ed25519PrivateKey) -> str:
    """The base64 raw public key of ``private``, as node settings carry it."""
    return base64.b64encode(_raw(private)).decode()


def canonical(message: Command | Manifest) -> bytes:
    """The bytes a signature covers: domain prefix + deterministic MessagePack, no signature."""
    domain = MANIFEST_DOMAIN if isinstance(message, Manifest) else COMMAND_DOMAIN
    unsigned = msgspec.structs.replace(message, signature=None)
    # Through builtins and back, so every value has its field's type: an int put in a float
    # field (created_at=0) travels as an int but is decoded as a float on the other side.
    typed = msgspec.convert(msgspec.to_builtins(unsigned), type(unsigned))
    return domain + _canonical.encode(_without_defaults(typed))


def _without_defaults(value: object) -> object:
    """Structs as maps of their non-default fields (recursively); other values as they are."""
    if isinstance(value, msgspec.Struct):
        out: dict[str, object] = {}
        for field in msgspec.structs.fields(value):
            item = getattr(value, field.name)
            if field.default is not msgspec.NODEFAULT and item == field.default:
                continue
            if field.default_factory is not msgspec.NODEFAULT and item == field.default_factory():
                continue
            out[field.encode_name] = _without_defaults(item)
        tag = value.__struct_config__.tag
        if tag is not None:
            out[value.__struct_config__.tag_field or "type"] = tag
        return out
    if isinstance(value, list | tuple):
        return [_without_defaults(v) for v in value]
    if isinstance(value, dict):
        return {k: _without_defaults(v) for k, v in value.items()}
    return value


def sign(message: Signed, private: Ed25519PrivateKey) -> Signed:
    """``message`` with ``signature`` set by ``private``."""
    return msgspec.structs.replace(message, signature=private.sign(canonical(message)))


def verify(message: Command | Manifest, keys: list[PublicKey]) -> PublicKey:
    """The trusted key that signed ``message``; SignatureError saying why there is none."""
    what = "manifest" if isinstance(message, Manifest) else "command"
    signature = message.signature
    if signature is None:
        raise SignatureError(f"unsigned {what}: this node accepts only signed ones")
    if len(signature) != SIGNATURE_BYTES:
        raise SignatureError(f"bad {what} signature: {len(signature)} bytes, not 64")
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    data = canonical(message)
    for trusted in keys:
        try:
            Ed25519PublicKey.from_public_bytes(trusted.raw).verify(signature, data)
        except InvalidSignature:
            continue
        return trusted
    ids = ", ".join(k.key_id for k in keys)
    raise SignatureError(
        f"bad {what} signature: not made by a trusted hub key ({ids}) over this content "
        "(forged or altered)"
    )


def _raw(private: Ed25519PrivateKey) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
