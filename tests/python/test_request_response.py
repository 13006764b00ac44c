"""MQTT 5 request/response (Response Topic + Correlation Data) and user properties, between
independent clients. User properties must be forwarded unchanged and in order, duplicates
included (MQTT-3.3.2-18)."""

from __future__ import annotations

import threading

from paho.mqtt.packettypes import PacketTypes

from mqttutil import TIMEOUT, unique, v5_props

USER_PROPS = [("trace", "t-1"), ("k", "first"), ("k", "second"), ("unicode", "h\u00e9llo")]


def test_request_response_paho(clients, topic):
    req_topic = f"{topic}/req"
    resp_topic = f"{topic}/resp/{unique('r')}"
    seen_by_responder: list = []
    answered = threading.Event()

    responder = clients.paho("v5", name="responder").connect()
    responder.subscribe(req_topic, 1)

    def on_request(client, _userdata, msg):
        seen_by_responder.append(msg)
        props = v5_props(
            PacketTypes.PUBLISH,
            CorrelationData=msg.properties.CorrelationData,
            UserProperty=[("handled-by", "responder")],
        )
        client.publish(msg.properties.ResponseTopic, b"pong:" + msg.payload, 1, properties=props)
        answered.set()

    responder.client.message_callback_add(req_topic, on_request)

    requester = clients.paho("v5", name="requester").connect()
    requester.subscribe(resp_topic, 1)
    correlation = b"\x00\x01corr-\xff"
    requester.publish(
        req_topic,
        "ping",
        1,
        properties=v5_props(
            PacketTypes.PUBLISH,
            ResponseTopic=resp_topic,
            CorrelationData=correlation,
            UserProperty=USER_PROPS,
            ContentType="text/plain",
        ),
    )
    assert answered.wait(TIMEOUT), "responder never got the request"
    req = seen_by_responder[0]
    assert req.properties.ResponseTopic == resp_topic
    assert req.properties.CorrelationData == correlation
    assert list(req.properties.UserProperty) == USER_PROPS, "user properties changed or reordered"
    assert req.properties.ContentType == "text/plain"

    resp = requester.messages.expect_one()
    assert resp.topic == resp_topic
    assert resp.payload == b"pong:ping"
    assert resp.correlation_data == correlation, "correlation data not round-tripped"
    assert resp.user_properties == [("handled-by", "responder")]


def test_mosquitto_pub_properties_to_paho(clients, topic):
    """mosquitto_pub -D publish ... -> paho: response topic, correlation data, user properties
    (duplicate keys, order) and content type arrive intact."""
    sub = clients.paho_sub("v5", topic, 1, name="paho-sub")
    extra = [
        "-D", "publish", "response-topic", f"{topic}/reply",
        "-D", "publish", "correlation-data", "req-42",
        "-D", "publish", "content-type", "application/json",
    ]  # fmt: skip
    for k, v in USER_PROPS:
        extra += ["-D", "publish", "user-property", k, v]
    clients.mosq_pub("v5", topic, '{"x":1}', qos=1, extra=extra)
    m = sub.messages.expect_one()
    assert m.payload == b'{"x":1}'
    assert m.response_topic == f"{topic}/reply"
    assert m.correlation_data == b"req-42"
    assert m.content_type == "application/json"
    assert m.user_properties == USER_PROPS


def test_paho_properties_to_mosquitto_sub(clients, topic):
    """paho -> mosquitto_sub -F %j: properties as seen by an independent v5 decoder."""
    sub = clients.mosq_sub("v5", topic, qos=2, count=1).wait_subscribed()
    pub = clients.paho("v5", name="paho-pub").connect()
    pub.publish(
        topic,
        "hello",
        2,
        properties=v5_props(
            PacketTypes.PUBLISH,
            ResponseTopic=f"{topic}/reply",
            CorrelationData=b"c-7",
            UserProperty=USER_PROPS,
        ),
    )
    m = sub.messages.expect_one()
    assert m.payload == b"hello"
    assert m.response_topic == f"{topic}/reply"
    assert m.correlation_data == b"c-7"
    assert m.user_properties == USER_PROPS
    assert sub.wait_exit() == 0


def test_request_response_mosquitto_responder(clients, topic):
    """Round trip where the requester is paho and the 'responder' side is mosquitto: a
    mosquitto_sub receives the request; the test answers with mosquitto_pub using the
    response topic and correlation data that mosquitto_sub decoded."""
    req_topic = f"{topic}/req"
    resp_topic = f"{topic}/resp"
    responder = clients.mosq_sub("v5", req_topic, qos=1, count=1).wait_subscribed()
    requester = clients.paho_sub("v5", resp_topic, 1, name="requester")
    requester.publish(
        req_topic,
        "what-time",
        1,
        properties=v5_props(
            PacketTypes.PUBLISH, ResponseTopic=resp_topic, CorrelationData=b"id-9"
        ),
    )
    req = responder.messages.expect_one()
    assert req.response_topic == resp_topic and req.correlation_data == b"id-9"
    clients.mosq_pub(
        "v5",
        req.response_topic,
        "noon",
        qos=1,
        extra=["-D", "publish", "correlation-data", req.correlation_data.decode()],
    )
    resp = requester.messages.expect_one()
    assert (resp.payload, resp.correlation_data) == (b"noon", b"id-9")
