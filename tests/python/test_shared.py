"""Shared subscriptions `$share/<group>/<filter>`: each message goes to exactly one member of
the group, and the load is spread (round-robin among online members in tern)."""

from __future__ import annotations

import time

from mqttutil import wait_until

N = 20


def _publish_n(clients, version, topic, n=N):
    pub = clients.paho(version, name="pub").connect()
    for i in range(n):
        pub.publish(topic, f"m{i}", 1)
    pub.disconnect()
    return {f"m{i}" for i in range(n)}


def test_shared_two_paho_members(clients, version, topic):
    a = clients.paho_sub(version, f"$share/g1/{topic}", 1, name="member-a")
    b = clients.paho_sub(version, f"$share/g1/{topic}", 1, name="member-b")
    sent = _publish_n(clients, version, topic)
    wait_until(lambda: a.messages.count() + b.messages.count() >= N, what=f"{N} messages")
    # Anything beyond N would be a duplicate: give it a short window to show up.
    time.sleep(0.2)
    got_a = [m.payload.decode() for m in a.messages.all]
    got_b = [m.payload.decode() for m in b.messages.all]
    assert len(got_a) + len(got_b) == N, f"a={got_a} b={got_b}"
    assert set(got_a) | set(got_b) == sent
    assert not set(got_a) & set(got_b), "a message was delivered to both members"
    assert got_a and got_b, f"one member got everything: a={len(got_a)} b={len(got_b)}"
    for m in a.messages.all + b.messages.all:
        assert m.topic == topic, "delivered topic must be the published topic, not $share/..."


def test_shared_group_plus_normal_subscriber(clients, version, topic):
    """A normal subscription still gets every message; two different groups each get every
    message once; a mosquitto_sub can be a group member next to a paho member."""
    normal = clients.paho_sub(version, topic, 1, name="normal")
    g1a = clients.paho_sub(version, f"$share/g1/{topic}", 1, name="g1-paho")
    g1b = clients.mosq_sub(version, f"$share/g1/{topic}", qos=1, name="g1-mosquitto")
    g1b.wait_subscribed()
    g2 = clients.paho_sub(version, f"$share/g2/{topic}", 1, name="g2-only")
    sent = _publish_n(clients, version, topic)

    assert {m.payload.decode() for m in normal.messages.expect(N)} == sent
    assert {m.payload.decode() for m in g2.messages.expect(N)} == sent
    wait_until(
        lambda: g1a.messages.count() + g1b.messages.count() >= N, what="group g1 to get all"
    )
    got_a = [m.payload.decode() for m in g1a.messages.all]
    got_b = [m.payload.decode() for m in g1b.messages.all]
    assert sorted(got_a + got_b) == sorted(sent), f"paho={got_a} mosquitto={got_b}"
    assert got_a and got_b, f"paho={len(got_a)} mosquitto={len(got_b)}"
