"""How the node and the hub say why they are not connected (schemas/connection.py)."""

from __future__ import annotations

import socket
import ssl

from schemas.connection import ConnectionReport, broker_url, explain, refused_by_broker


def test_urls_show_tls() -> None:
    assert broker_url("10.0.0.5", 8883, tls=True) == "mqtts://10.0.0.5:8883"
    assert broker_url("broker", 1883, tls=False) == "mqtt://broker:1883"
    assert broker_url("::1", 1883, tls=False) == "mqtt://[::1]:1883"


def test_each_failure_says_what_to_look_at() -> None:
    refused = explain(ConnectionRefusedError(111, "Connection refused"), "h", 1883, "")
    assert refused.startswith("connection refused by h:1883")
    dns = explain(socket.gaierror(-2, "Name or service not known"), "nohost", 1883, "")
    assert dns == "unreachable: cannot resolve host name 'nohost' (Name or service not known)"
    assert "time-out" in explain(TimeoutError("timed out"), "h", 1883, "")
    assert "No route to host" in explain(OSError(113, "No route to host"), "h", 1883, "")
    bad_cert = ssl.SSLCertVerificationError(1, "certificate verify failed")
    bad_cert.verify_message = "IP address mismatch, certificate is not valid for '10.0.0.5'."
    assert explain(bad_cert, "10.0.0.5", 8883, "/etc/edgeml/ca.crt") == (
        "TLS verification failed for 10.0.0.5 (CA /etc/edgeml/ca.crt): "
        "IP address mismatch, certificate is not valid for '10.0.0.5'."
    )
    assert "Not authorized" in refused_by_broker("Not authorized")


def test_warns_at_once_then_at_most_once_per_interval() -> None:
    report = ConnectionReport("mqtt://h:1883", interval_s=60)
    first = report.failed("connection refused", now=100.0)
    assert first == "not connected to mqtt://h:1883: connection refused; retrying"
    assert [report.failed("connection refused", now=100.0 + t) for t in (1, 3, 7, 15, 31)] == [
        None
    ] * 5
    again = report.failed("connection refused", now=161.0)
    assert again is not None and "6 attempts since the last report, down 61 s" in again
    assert report.connected(now=170.0) == (
        "connected to mqtt://h:1883 after 7 failed attempts over 70 s"
    )
    # A new outage warns at once again; a connection without an outage says nothing.
    assert report.failed("connection refused", now=500.0) is not None
    assert report.connected(now=501.0) is not None
    assert report.connected(now=502.0) is None
