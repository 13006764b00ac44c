"""Persistent sessions: a subscriber with clean_session=False (3.1.1) or clean_start=False plus a
session expiry interval (5.0) goes offline; QoS 1/2 messages published meanwhile are delivered
when it reconnects. The offline messages come from the other client family."""

from __future__ import annotations

import pytest

from mqttutil import unique

EXPIRY = 300


def _publish_offline(clients, family, version, topic):
    """Three messages while the subscriber is offline; returns {payload: publish QoS}."""
    msgs = {"q1-a": 1, "q2-b": 2, "q1-c": 1}
    if family == "paho":
        pub = clients.paho(version, name="offline-pub").connect()
        for payload, qos in msgs.items():
            pub.publish(topic, payload, qos)
        pub.disconnect()
    else:
        for payload, qos in msgs.items():
            clients.mosq_pub(version, topic, payload, qos=qos)
    return msgs


def _check_queued(got, msgs):
    payloads = [m.payload.decode() for m in got]
    assert sorted(payloads) == sorted(msgs), f"queued messages: got {payloads}"
    assert payloads.index("q1-a") < payloads.index("q1-c"), f"QoS 1 order lost: {payloads}"
    for m in got:
        assert m.qos == msgs[m.payload.decode()], (
            f"{m.payload!r} delivered at QoS {m.qos}, expected {msgs[m.payload.decode()]}"
        )


def test_persistent_session_paho(clients, version, topic):
    """paho subscriber; mosquitto_pub publishes while it is offline. The subscriber does NOT
    subscribe again after reconnecting: the subscription must have been kept too."""
    cid = unique("persist")
    expiry = EXPIRY if version == "v5" else None
    # v5: clean_start=True the first time (a brand new session that outlives the connection).
    first = clients.paho(version, cid, clean=(version == "v5"), session_expiry=expiry, name="s1")
    first.connect(expect_session_present=False)
    first.subscribe(topic, 2)
    first.disconnect()

    msgs = _publish_offline(clients, "mosquitto", version, topic)

    again = clients.paho(version, cid, clean=False, session_expiry=expiry, name="s2")
    again.connect(expect_session_present=True)
    _check_queued(again.messages.expect(3), msgs)

    # The session's subscription is live again on the resumed connection.
    clients.mosq_pub(version, topic, "live", qos=1)
    assert again.messages.expect_one().payload == b"live"


def test_persistent_session_mosquitto(clients, version, topic):
    """mosquitto_sub -c (and -x for v5) subscriber; paho publishes while it is offline."""
    cid = unique("persist-mosq")
    expiry = EXPIRY if version == "v5" else None
    # -E: exit (with a normal DISCONNECT) once the subscription is acknowledged.
    first = clients.mosq_sub(
        version, topic, qos=2, client_id=cid, persistent=True, session_expiry=expiry, extra=["-E"]
    )
    assert first.wait_exit() == 0, first.output()

    msgs = _publish_offline(clients, "paho", version, topic)

    again = clients.mosq_sub(
        version, topic, qos=2, client_id=cid, persistent=True, session_expiry=expiry, count=3
    )
    _check_queued(again.messages.expect(3), msgs)
    assert again.wait_exit() == 0, again.output()


@pytest.mark.parametrize(
    "case",
    ["v311-clean-session", "v5-clean-start", "v5-expiry-zero"],
)
def test_session_not_resumed(clients, topic, case):
    """No resumption when the client asks for a clean session, or (v5) when the session
    expired at disconnect (Session Expiry Interval 0, the default)."""
    version = case.split("-")[0]
    cid = unique("clean")
    if case == "v311-clean-session":
        first = clients.paho(version, cid, clean=False)
    else:
        expiry = 0 if case == "v5-expiry-zero" else EXPIRY
        first = clients.paho(version, cid, clean=True, session_expiry=expiry)
    first.connect(expect_session_present=False)
    first.subscribe(topic, 1)
    first.disconnect()

    clients.mosq_pub(version, topic, "while-offline", qos=1)

    if case == "v5-expiry-zero":
        again = clients.paho(version, cid, clean=False, session_expiry=EXPIRY)
    else:
        again = clients.paho(version, cid, clean=True)
    again.connect(expect_session_present=False)
    # Anything still queued would be sent before the SUBACK, so before the marker.
    again.subscribe(topic, 1)
    clients.mosq_pub(version, topic, "marker", qos=1)
    m = again.messages.expect_one()
    assert m.payload == b"marker", f"old session was resumed: got {m.payload!r} first"


def test_queued_while_offline_then_clean_start_discards(clients, topic):
    """v5: clean_start=True on reconnect discards the stored session and its queue."""
    cid = unique("discard")
    first = clients.paho("v5", cid, clean=True, session_expiry=EXPIRY)
    first.connect(expect_session_present=False)
    first.subscribe(topic, 1)
    first.disconnect()
    clients.mosq_pub("v5", topic, "queued", qos=1)
    # A resume shows the message was queued...
    probe = clients.paho("v5", cid, clean=False, session_expiry=EXPIRY)
    probe.connect(expect_session_present=True)
    assert probe.messages.expect_one().payload == b"queued"
    probe.disconnect()
    clients.mosq_pub("v5", topic, "queued-2", qos=1)
    # ...and clean_start=True drops the session with what it had queued.
    fresh = clients.paho("v5", cid, clean=True, session_expiry=EXPIRY)
    fresh.connect(expect_session_present=False)
    fresh.subscribe(topic, 1)
    clients.mosq_pub("v5", topic, "marker", qos=1)
    assert fresh.messages.expect_one().payload == b"marker"
