"""The tern binary's process contract as the tests (and operators) rely on it: ready line on
stderr with the bound address, TERN_MQTT_ADDR, graceful SIGTERM (exit 0; MQTT 5 clients get
DISCONNECT 0x8B 'server shutting down')."""

from __future__ import annotations

import socket

import pytest

from conftest import REFERENCE, split_addr
from mqttutil import HOST, TIMEOUT, PahoClient

pytestmark = pytest.mark.skipif(
    REFERENCE != "tern", reason="tern process contract; not applicable to the reference broker"
)


def test_ready_line_reports_bound_port(tern_factory):
    server = tern_factory()
    host, port = split_addr(server.addr)
    assert host == HOST and port > 0
    socket.create_connection((HOST, port), TIMEOUT).close()


def test_mqtt_addr_from_environment(tern_factory):
    server = tern_factory(mqtt_addr=None, env={"TERN_MQTT_ADDR": "127.0.0.1:0"})
    assert server.port > 0 and server.port != 1883
    c = PahoClient(server.port, "v311").connect()
    c.disconnect()


def _raw_v5_connect(port: int) -> socket.socket:
    """A minimal MQTT 5 CONNECT over a raw socket (paho 2.1 drops the reason code of a
    DISCONNECT that carries no properties, so it can't be used to check 0x8B)."""
    s = socket.create_connection((HOST, port), TIMEOUT)
    s.settimeout(TIMEOUT)
    client_id = b"raw-v5"
    # protocol name, level 5, flags: clean start, keep alive 60, no properties
    body = b"\x00\x04MQTT\x05\x02\x00\x3c\x00" + len(client_id).to_bytes(2, "big") + client_id
    s.sendall(bytes([0x10, len(body)]) + body)
    connack = s.recv(2)
    assert connack[:1] == b"\x20", f"expected CONNACK, got {connack!r}"
    remaining = connack[1]
    while remaining:
        remaining -= len(s.recv(remaining))
    return s


def _read_until_closed(s: socket.socket) -> bytes:
    data = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            return data
        data += chunk


def test_sigterm_is_graceful(tern_factory):
    server = tern_factory()
    raw = _raw_v5_connect(server.port)
    v5 = PahoClient(server.port, "v5", name="v5-client").connect()
    v3 = PahoClient(server.port, "v311", name="v311-client").connect()
    rc = server.terminate()
    assert rc == 0, f"tern exit code after SIGTERM: {rc} (None = still running after 10s)"
    assert v5.disconnected.wait(TIMEOUT), "v5 client was not disconnected"
    assert v3.disconnected.wait(TIMEOUT), "v3.1.1 client was not disconnected"
    # MQTT 5: DISCONNECT (0xE0) with reason code 0x8B "Server shutting down", then close.
    data = _read_until_closed(raw)
    assert data[:1] == b"\xe0" and len(data) >= 3 and data[2] == 0x8B, (
        f"v5 client should get DISCONNECT 0x8B before the close, got {data.hex()}"
    )
    raw.close()
    v5.close()
    v3.close()
