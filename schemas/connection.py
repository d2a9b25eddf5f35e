"""Why an MQTT client is not connected, in words, and how often to say so (both processes).

Pure: the transports pass in the exception paho swallowed and the time. The first failure of
an outage is worth a WARNING at once; after that one line per ``interval_s`` at most, counting
the attempts in between, so a node that is offline for a day logs ~1,400 lines, not ~86,000.
"""

from __future__ import annotations

import socket
import ssl
from typing import Final

WARN_INTERVAL_S: Final = 60.0


def broker_url(host: str, port: int, tls: bool) -> str:
    """``mqtt://host:port``, or ``mqtts://`` when the connection uses TLS."""
    shown = f"[{host}]" if ":" in host else host
    return f"{'mqtts' if tls else 'mqtt'}://{shown}:{port}"


def explain(exc: BaseException | None, host: str, port: int, tls_ca: str) -> str:
    """Why connecting to ``host:port`` failed, for a plant engineer rather than a socket API."""
    where = f"{host}:{port}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        detail = exc.verify_message or exc.reason or str(exc)
        return f"TLS verification failed for {host} (CA {tls_ca or 'system store'}): {detail}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake with {where} failed: {exc.reason or exc}"
    if isinstance(exc, ConnectionRefusedError):
        return f"connection refused by {where}: is the broker running and listening there?"
    if isinstance(exc, socket.gaierror):
        return f"unreachable: cannot resolve host name {host!r} ({exc.strerror})"
    if isinstance(exc, TimeoutError):
        return f"unreachable: no answer from {where} (time-out; firewall or wrong address?)"
    if isinstance(exc, OSError):
        return f"unreachable: {where}: {exc.strerror or exc}"
    if exc is None:
        return f"connecting to {where} failed"
    return f"connecting to {where} failed: {exc}"


def refused_by_broker(reason: str) -> str:
    """The broker answered but refused us (wrong password, unknown user, ...)."""
    return f"refused by the broker: {reason} (check the user name and password file)"


# MQTT v5 DISCONNECT reason: another connection arrived with this client id and took the session.
SESSION_TAKEN_OVER: Final = 0x8E
# A connection the broker ends this soon after it began counts as "dropped at once".
SHORT_CONNECTION_S: Final = 10.0
# This many in a row look like another client taking the session each time it reconnects.
FLAPS_BEFORE_ERROR: Final = 3


def taken_over(url: str, client_id: str, times: int) -> str:
    """The line a client logs at ERROR when another client seems to hold its client id."""
    return (
        f"connection to {url} ended {times} times within seconds of connecting: another client "
        f"is using client id {client_id!r} (two processes with one identity, such as two hubs "
        "with one mqtt.client_id?), or the broker drops this client for another reason; "
        "the broker's log says which"
    )


class Flapping:
    """Tells a session takeover from an ordinary drop (pure; time comes in as arguments).

    Mosquitto 2.0 closes the socket of the client whose session is taken over without saying
    why (later brokers send reason 0x8E): both clients reconnect and evict each other, so the
    sign is a run of connections that end within seconds of starting.
    """

    def __init__(self, short_s: float = SHORT_CONNECTION_S, runs: int = FLAPS_BEFORE_ERROR) -> None:
        self._short = short_s
        self._runs = runs
        self._since: float | None = None
        self.run = 0  # connections in a row that ended within ``short_s``

    def connected(self, now: float) -> None:
        """A connection was established."""
        self._since = now

    def dropped(self, now: float, reason: int) -> bool:
        """A connection ended; True when that is worth an ERROR line (first, then every 10th)."""
        short = self._since is not None and now - self._since < self._short
        self._since = None
        self.run = self.run + 1 if short or reason == SESSION_TAKEN_OVER else 0
        if reason == SESSION_TAKEN_OVER:
            self.run = max(self.run, self._runs)
        return self.run >= self._runs and (self.run - self._runs) % 10 == 0


class ConnectionReport:
    """Decides which connection problems are logged at WARNING, and with what words."""

    def __init__(self, url: str, interval_s: float = WARN_INTERVAL_S) -> None:
        self.url = url
        self._interval = interval_s
        self._since: float | None = None  # start of the current outage
        self._warned_at: float | None = None
        self._failures = 0  # failed attempts in this outage
        self._unreported = 0  # ... since the last warning

    def failed(self, why: str, now: float) -> str | None:
        """A failed attempt; the line to log at WARNING, or None to stay quiet this time."""
        self._failures += 1
        self._unreported += 1
        if self._since is None:
            self._since = now
        if self._warned_at is not None and now - self._warned_at < self._interval:
            return None
        attempts = "" if self._failures == 1 else f"; {self._unreported} attempts since the last "
        if attempts:
            attempts += f"report, down {now - self._since:.0f} s"
        self._warned_at, self._unreported = now, 0
        return f"not connected to {self.url}: {why}{attempts}; retrying"

    def connected(self, now: float) -> str | None:
        """Connected; a line saying the outage is over, or None if there was none."""
        if self._since is None:
            return None
        line = f"connected to {self.url} after {self._failures} failed attempts"
        line += f" over {now - self._since:.0f} s"
        self._since = self._warned_at = None
        self._failures = self._unreported = 0
        return line
