"""Will messages: published when a client's connection drops without DISCONNECT, not
published on a normal DISCONNECT. paho-mqtt and mosquitto clients, MQTT 3.1.1 and 5.0."""

from __future__ import annotations

import pytest

from mqttutil import unique

FAMILIES = ("paho", "mosquitto")


def _will_client(clients, family, version, will_topic, payload, *, qos=1, retain=False):
    """A connected client that has a will; returns an object with .abort() and .clean()."""
    if family == "paho":
        c = clients.paho(
            version,
            name=f"will-{payload}",
            will={"topic": will_topic, "payload": payload, "qos": qos, "retain": retain},
        ).connect()
        return _Handle(abort=c.abort, clean=c.disconnect)
    extra = ["--will-topic", will_topic, "--will-payload", payload, "--will-qos", str(qos)]
    if retain:
        extra.append("--will-retain")
    # mosquitto_pub -l stays connected until stdin closes (then sends DISCONNECT);
    # SIGKILL makes the OS close the socket with no DISCONNECT.
    p = clients.mosq_pub_lines(
        version, unique("tern-it") + "/unused", extra=extra, name=f"mosquitto_pub-{payload}"
    ).wait_connected()

    def clean():
        p.close_stdin()
        assert p.wait_exit() == 0, p.output()

    return _Handle(abort=p.kill, clean=clean)


class _Handle:
    def __init__(self, abort, clean):
        self.abort = abort
        self.clean = clean


@pytest.mark.parametrize("family", FAMILIES)
def test_will_published_on_abrupt_close(clients, version, topic, family):
    watcher = clients.paho_sub(version, topic, 1, name="watcher")
    mosq_watcher = clients.mosq_sub(version, topic, qos=1, count=1).wait_subscribed()
    h = _will_client(clients, family, version, topic, "gone", qos=1)
    h.abort()
    m = watcher.messages.expect_one()
    assert (m.topic, m.payload, m.qos) == (topic, b"gone", 1)
    assert mosq_watcher.messages.expect_one().payload == b"gone"


@pytest.mark.parametrize("family", FAMILIES)
def test_no_will_on_clean_disconnect(clients, version, topic, family):
    """After a clean DISCONNECT no will is sent. To show absence without a long sleep, a second
    client with will 'sentinel' is then dropped: once its will arrives, the first client's
    (earlier) disconnect has long been handled, and its will must not have appeared."""
    watcher = clients.paho_sub(version, topic, 1, name="watcher")
    _will_client(clients, family, version, topic, "clean").clean()
    _will_client(clients, family, version, topic, "sentinel").abort()
    m = watcher.messages.expect_one()
    assert m.payload == b"sentinel", f"will sent after a normal DISCONNECT: {m.payload!r}"
    watcher.messages.expect_none(0.2)


def test_retained_will(clients, version, topic):
    """A will with RETAIN=1 is stored as the retained message of its topic."""
    h = _will_client(clients, "paho", version, topic, "offline", retain=True)
    h.abort()
    sub = clients.mosq_sub(version, topic, qos=1, count=1).wait_subscribed()
    # The will may be published a moment after the socket closes: wait for it.
    m = sub.messages.expect_one()
    assert (m.payload, m.retain) == (b"offline", True)


def test_v5_disconnect_with_will_message(clients, topic):
    """MQTT 5: DISCONNECT with reason code 0x04 (Disconnect with Will Message) sends the will."""
    watcher = clients.paho_sub("v5", topic, 1, name="watcher")
    c = clients.paho("v5", name="willer", will={"topic": topic, "payload": "bye", "qos": 1})
    c.connect()
    c.disconnect(reason_code=0x04)
    m = watcher.messages.expect_one()
    assert m.payload == b"bye"


def test_will_user_properties_v5(clients, topic):
    """MQTT 5: will properties (user properties, content type) are forwarded with the will."""
    from mqttutil import v5_props
    from paho.mqtt.packettypes import PacketTypes

    watcher = clients.paho_sub("v5", topic, 1, name="watcher")
    props = v5_props(
        PacketTypes.WILLMESSAGE,
        UserProperty=[("device", "d1"), ("reason", "crash")],
        ContentType="text/plain",
    )
    c = clients.paho(
        "v5", name="willer", will={"topic": topic, "payload": "x", "qos": 1, "properties": props}
    ).connect()
    c.abort()
    m = watcher.messages.expect_one()
    assert m.user_properties == [("device", "d1"), ("reason", "crash")]
    assert m.content_type == "text/plain"
