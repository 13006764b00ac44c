"""Retained messages: set, delivered on subscribe with the retain flag, cleared by an empty
retained payload. Setter and receiver families are crossed (paho-mqtt, mosquitto clients)."""

from __future__ import annotations

import pytest

FAMILIES = ("paho", "mosquitto")


def _set_retained(clients, family, version, topic, payload, qos=1):
    """payload=None clears (zero-length retained message)."""
    if family == "paho":
        c = clients.paho(version, name="setter").connect()
        c.publish(topic, b"" if payload is None else payload, qos, retain=True)
        c.disconnect()
    else:
        clients.mosq_pub(version, topic, payload, qos=qos, retain=True)


def _first_message_on_subscribe(clients, family, version, topic):
    """Subscribe, then publish a non-retained marker on the same topic. Whatever retained
    message exists is sent on subscribe, i.e. before the marker; so the first message seen
    is either the retained one or the marker. No fixed sleep needed."""
    if family == "paho":
        sub = clients.paho_sub(version, topic, 1, name="receiver")
        sink = sub.messages
    else:
        sink = clients.mosq_sub(version, topic, qos=1, count=1).wait_subscribed().messages
    marker = clients.paho(version, name="marker").connect()
    marker.publish(topic, "marker", 1)
    marker.disconnect()
    return sink.expect_one()


@pytest.mark.parametrize("receiver", FAMILIES)
@pytest.mark.parametrize("setter", FAMILIES)
def test_retained_set_receive_clear(clients, version, topic, setter, receiver):
    _set_retained(clients, setter, version, topic, "state=on")
    first = _first_message_on_subscribe(clients, receiver, version, topic)
    assert first.payload == b"state=on", "retained message not delivered on subscribe"
    assert first.retain, "message delivered on subscribe must carry RETAIN=1"
    assert first.topic == topic

    # Replace, then clear.
    _set_retained(clients, setter, version, topic, "state=off")
    first = _first_message_on_subscribe(clients, receiver, version, topic)
    assert (first.payload, first.retain) == (b"state=off", True), "retained not replaced"

    _set_retained(clients, setter, version, topic, None)
    first = _first_message_on_subscribe(clients, receiver, version, topic)
    assert (first.payload, first.retain) == (b"marker", False), (
        f"retained message not cleared by an empty retained publish: got {first.payload!r}"
    )


def test_retained_to_existing_subscriber(clients, version, topic):
    """A retained publish reaches an existing subscription with RETAIN=0 ([MQTT-3.3.1-9] /
    v5 3.3.1.3 without Retain As Published), and so does the empty clearing message."""
    sub = clients.paho_sub(version, topic, 1, name="existing")
    pub = clients.paho(version, name="pub").connect()
    pub.publish(topic, "live", 1, retain=True)
    m = sub.messages.expect_one()
    assert (m.payload, m.retain) == (b"live", False)
    pub.publish(topic, b"", 1, retain=True)
    m = sub.messages.expect_one()
    assert (m.payload, m.retain) == (b"", False), "empty retained publish must be forwarded"


def test_retained_qos_and_wildcard(clients, version, topic):
    """Retained messages are delivered to a matching wildcard subscription at
    min(retained QoS, subscription QoS)."""
    base = topic.rsplit("/", 1)[0]
    clients.mosq_pub(version, f"{base}/a", "A", qos=2, retain=True)
    clients.mosq_pub(version, f"{base}/b", "B", qos=0, retain=True)
    sub = clients.paho(version, name="wild").connect()
    sub.subscribe(f"{base}/+", 1)
    got = sorted(sub.messages.expect(2), key=lambda m: m.topic)
    assert [(m.topic, m.payload, m.retain) for m in got] == [
        (f"{base}/a", b"A", True),
        (f"{base}/b", b"B", True),
    ]
    assert [m.qos for m in got] == [1, 0]
