"""TERN_<SECTION>__<KEY> environment overrides, seen from independent clients: $SYS topics in
Mosquitto's naming at the configured interval, and a packet size limit advertised in CONNACK."""

from __future__ import annotations

import pytest

from conftest import REFERENCE
from mqttutil import PahoClient, mosq_sub

pytestmark = pytest.mark.skipif(
    REFERENCE != "tern", reason="tern configuration; not applicable to the reference broker"
)


def test_sys_topics_with_interval_override(tern_factory):
    server = tern_factory(env={"TERN_SYS__INTERVAL": "1"})
    sub = mosq_sub(
        server.port,
        "v311",
        ["$SYS/broker/version", "$SYS/broker/uptime", "$SYS/broker/clients/connected"],
        count=3,
        wait_secs=10,
    )
    try:
        got = {m.topic: m.payload for m in sub.messages.expect(3, timeout=8)}
    finally:
        sub.kill()
    assert set(got) == {
        "$SYS/broker/version",
        "$SYS/broker/uptime",
        "$SYS/broker/clients/connected",
    }, got
    assert got["$SYS/broker/version"], "empty $SYS/broker/version"


def test_max_packet_size_override_in_connack(tern_factory):
    server = tern_factory(env={"TERN_MQTT__MAX_PACKET_SIZE": "2000"})
    c = PahoClient(server.port, "v5").connect()
    try:
        props = c.connack_properties
        assert getattr(props, "MaximumPacketSize", None) == 2000, (
            f"CONNACK Maximum Packet Size: {getattr(props, 'MaximumPacketSize', None)}"
        )
    finally:
        c.close()
