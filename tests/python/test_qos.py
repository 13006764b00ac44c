"""QoS 0/1/2 delivery between independent clients, MQTT 3.1.1 and 5.0.

Every combination of publisher family x subscriber family (paho-mqtt, mosquitto clients) x
protocol version x QoS, so mosquitto_pub -> paho and paho -> mosquitto_sub are covered too.
"""

from __future__ import annotations

import pytest

FAMILIES = ("paho", "mosquitto")


def _subscribe(clients, family, version, topic, qos, count):
    if family == "paho":
        return clients.paho_sub(version, topic, qos, name="sub").messages, None
    proc = clients.mosq_sub(version, topic, qos=qos, count=count).wait_subscribed()
    return proc.messages, proc


def _publish(clients, family, version, topic, payloads, qos):
    if family == "paho":
        pub = clients.paho(version, name="pub").connect()
        for p in payloads:
            pub.publish(topic, p, qos)
        pub.disconnect()
    else:
        # One connection (-l), so the order of the messages is defined.
        clients.mosq_pub(version, topic, lines=payloads, qos=qos)


@pytest.mark.parametrize("qos", [0, 1, 2])
@pytest.mark.parametrize("sub_family", FAMILIES)
@pytest.mark.parametrize("pub_family", FAMILIES)
def test_delivery(clients, version, topic, qos, pub_family, sub_family):
    """Messages arrive once each, in order, at the subscription's QoS; the trailing 'end'
    marker shows no duplicate came in between."""
    payloads = [f"{pub_family}-q{qos}-{i}" for i in range(3)] + ["end"]
    sink, proc = _subscribe(clients, sub_family, version, topic, qos, len(payloads))
    _publish(clients, pub_family, version, topic, payloads, qos)
    got = sink.expect(len(payloads))
    assert [m.payload.decode() for m in got] == payloads
    for m in got:
        assert m.topic == topic
        assert m.qos == qos, f"delivered at QoS {m.qos}, published and subscribed at {qos}"
        assert not m.retain
    if proc is not None:
        assert proc.wait_exit() == 0, proc.output()


def test_qos_downgrade(clients, version, topic):
    """Delivered at min(publish QoS, subscription QoS)."""
    subs = {q: clients.paho_sub(version, topic, q, name=f"sub-q{q}") for q in (0, 1, 2)}
    pub = clients.paho(version, name="pub").connect()
    for pq in (0, 1, 2):
        pub.publish(topic, f"pub-q{pq}", pq)
        pub.publish(topic, f"end-q{pq}", pq)  # same-QoS marker: keeps order checkable
    for sq, sub in subs.items():
        got = sub.messages.expect(6)
        by_payload = {m.payload.decode(): m.qos for m in got}
        assert len(by_payload) == 6, [m.payload for m in got]
        for pq in (0, 1, 2):
            assert by_payload[f"pub-q{pq}"] == min(pq, sq), (
                f"subscription QoS {sq}, publish QoS {pq}: delivered at "
                f"{by_payload[f'pub-q{pq}']}, expected {min(pq, sq)}"
            )


def test_wildcard_subscription_mosquitto_to_paho(clients, version, topic):
    """'+' and '#' filters across client families."""
    base = topic.rsplit("/", 1)[0]
    plus = clients.paho_sub(version, f"{base}/+/temp", 1, name="plus")
    hash_ = clients.mosq_sub(version, f"{base}/#", qos=1, count=2).wait_subscribed()
    clients.mosq_pub(version, f"{base}/room1/temp", "21.5", qos=1)
    clients.mosq_pub(version, f"{base}/room1/hum", "40", qos=1)
    m = plus.messages.expect_one()
    assert (m.topic, m.payload) == (f"{base}/room1/temp", b"21.5")
    got = hash_.messages.expect(2)
    assert sorted(m.topic for m in got) == sorted([f"{base}/room1/temp", f"{base}/room1/hum"])
    plus.messages.expect_none(0.1)
