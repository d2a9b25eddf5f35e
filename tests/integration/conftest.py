"""Fixtures that run a real Mosquitto with the project's config, ACL and fresh passwords, and a
real PostgreSQL for the shared store."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud_hub.store.base import HubStore, open_store
from tests.broker import INSTALL_HINT, Broker, find_mosquitto
from tests.postgres import INSTALL_HINT as PG_INSTALL_HINT
from tests.postgres import Postgres, find_bin

HUB = "hub"
NODES = (
    *("node-a", "node-b", "node-c", "pump-1", "pump-2", "pump-3"),
    *("life-1", "life-2", "life-3", "life-4", "obs-1", "obs-2", "obs-3"),
    *("loop-1", "loop-2"),
    "shadow-1",
)


def _users() -> dict[str, str]:
    return {name: secrets.token_urlsafe(16) for name in (HUB, *NODES)}


def _require_mosquitto() -> None:
    # Fail rather than skip: a skipped broker suite would hide that nothing was tested.
    if find_mosquitto() is None or find_mosquitto("mosquitto_passwd") is None:
        pytest.fail(f"integration tests need mosquitto and mosquitto_passwd: {INSTALL_HINT}")


def _run(workdir: Path) -> Iterator[Broker]:
    _require_mosquitto()
    broker = Broker(workdir, _users())
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """One broker for the whole session; tests must use their own node ids or client ids."""
    yield from _run(tmp_path_factory.mktemp("mosquitto"))


@pytest.fixture
def fresh_broker(tmp_path: Path) -> Iterator[Broker]:
    """A broker of the test's own (own dir and port), for tests that restart or kill it."""
    yield from _run(tmp_path / "mosquitto")


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """One PostgreSQL server for the session (Debian package, temporary folder, loopback)."""
    if find_bin() is None:
        pytest.fail(f"integration tests need PostgreSQL: {PG_INSTALL_HINT}")
    server = Postgres()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(postgres: Postgres) -> str:
    """The URL of a fresh, empty database of the test's own."""
    return postgres.new_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Path]:
    """(store.url, store.db) of a new store of each backend."""
    url = request.getfixturevalue("pg_url") if request.param == "postgresql" else ""
    return url, tmp_path / "hub.db"


@pytest.fixture
def store(where: tuple[str, Path]) -> Iterator[HubStore]:
    """A hub store of each backend (``where``), closed after the test."""
    opened = open_store(*where)
    try:
        yield opened
    finally:
        opened.close()
