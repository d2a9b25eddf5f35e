#!/usr/bin/env python3
"""Node accounts of Mosquitto's dynamic security plugin, bound to their client ids (stdlib only).

Mosquitto does not tie a client id to an account by itself: any login may present any client
id and take over that client's session. The dynamic security plugin refuses a login whose
client id differs from the one recorded for its account, so each node account here carries
``clientid`` = its node id. Roles stay empty and the default access denies: the plugin then
leaves every topic decision to the ACL file (mosquitto/acl), which stays the one set of rules.
Accounts the plugin does not know (the hub's, in the password file) fall through to the
password file too.

Usage: dynsec_clients.py FILE NODE_ID   (the password on stdin; FILE is created if missing)
       dynsec_clients.py --init FILE   (an empty file, if missing)
The broker reads FILE at start: restart it after adding a node.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import sys
import tempfile
from pathlib import Path
from typing import Any

# What the plugin itself writes: PBKDF2-HMAC-SHA512, 12-byte salt, 101 iterations.
ITERATIONS = 101
SALT_BYTES = 12
# Nothing granted by the plugin: every ACL check falls through to the ACL file.
DEFAULT_ACCESS = {
    "publishClientSend": False,
    "publishClientReceive": False,
    "subscribe": False,
    "unsubscribe": False,
}


def empty() -> dict[str, Any]:
    """A plugin file with no accounts."""
    return {"defaultACLAccess": dict(DEFAULT_ACCESS), "clients": [], "groups": [], "roles": []}


def client_entry(username: str, password: str) -> dict[str, Any]:
    """An account that may only connect with client id ``username``."""
    salt = secrets.token_bytes(SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, ITERATIONS, 64)
    return {
        "username": username,
        "clientid": username,
        "password": base64.b64encode(digest).decode(),
        "salt": base64.b64encode(salt).decode(),
        "iterations": ITERATIONS,
        "roles": [],
    }


def with_client(data: dict[str, Any], username: str, password: str) -> tuple[dict[str, Any], str]:
    """``data`` with ``username`` added or its password replaced; and "added" or "updated"."""
    clients = [c for c in data.get("clients", []) if c.get("username") != username]
    action = "updated" if len(clients) < len(data.get("clients", [])) else "added"
    return {**data, "clients": [*clients, client_entry(username, password)]}, action


def load(path: Path) -> dict[str, Any]:
    """The plugin file, or an empty one if it does not exist yet."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return empty()
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a dynamic security file (a JSON object)")
    return data


def save(path: Path, data: dict[str, Any]) -> None:
    """Write atomically, readable by its owner only (it holds password hashes)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(data, out, indent=2)
        out.write("\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "--init":
        path = Path(argv[1])
        if not path.exists():
            save(path, empty())
        return 0
    if len(argv) != 2:
        print("usage: dynsec_clients.py FILE NODE_ID < password | --init FILE", file=sys.stderr)
        return 2
    path, username = Path(argv[0]), argv[1]
    password = sys.stdin.read().strip()
    if not password:
        print("error: empty password on stdin", file=sys.stderr)
        return 2
    try:
        data, action = with_client(load(path), username, password)
    except (ValueError, json.JSONDecodeError) as exc:
        print(f"error: {path}: {exc}", file=sys.stderr)
        return 1
    save(path, data)
    print(f"{action} node '{username}' in {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
