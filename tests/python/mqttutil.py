"""Helpers for the interop tests: a paho-mqtt 2.x wrapper and mosquitto_pub/_sub runners.

Everything here waits on events with timeouts; nothing sleeps for a fixed time except
`expect_none`, which is only used with short windows to show that something did NOT arrive.
"""

from __future__ import annotations

import json
import os
import queue
import socket
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

HOST = "127.0.0.1"
# Upper bound for any single wait. Generous for slow CI, never reached when things work.
TIMEOUT = float(os.environ.get("TERN_PYTEST_WAIT", "5"))

VERSIONS = ("v311", "v5")
PAHO_PROTOCOL = {"v311": mqtt.MQTTv311, "v5": mqtt.MQTTv5}
MOSQ_VERSION = {"v311": "mqttv311", "v5": "mqttv5"}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


# --------------------------------------------------------------------------------------------
# paho-mqtt
# --------------------------------------------------------------------------------------------


@dataclass
class Received:
    """A message as seen by any client family, normalised for assertions."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    user_properties: list[tuple[str, str]] = field(default_factory=list)
    response_topic: str | None = None
    correlation_data: bytes | None = None
    content_type: str | None = None
    raw: Any = None


def _from_paho(msg: mqtt.MQTTMessage) -> Received:
    props = getattr(msg, "properties", None)
    user = list(getattr(props, "UserProperty", []) or []) if props is not None else []
    return Received(
        topic=msg.topic,
        payload=bytes(msg.payload),
        qos=msg.qos,
        retain=bool(msg.retain),
        user_properties=[(str(k), str(v)) for k, v in user],
        response_topic=getattr(props, "ResponseTopic", None) if props is not None else None,
        correlation_data=getattr(props, "CorrelationData", None) if props is not None else None,
        content_type=getattr(props, "ContentType", None) if props is not None else None,
        raw=msg,
    )


class MessageSink:
    """Thread-safe collector of received messages with waiting helpers."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._cond = threading.Condition()
        self._messages: list[Received] = []
        self._taken = 0

    def add(self, msg: Received) -> None:
        with self._cond:
            self._messages.append(msg)
            self._cond.notify_all()

    @property
    def all(self) -> list[Received]:
        with self._cond:
            return list(self._messages)

    def count(self) -> int:
        with self._cond:
            return len(self._messages)

    def wait_count(self, n: int, timeout: float = TIMEOUT) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: len(self._messages) >= n, timeout)

    def expect(self, n: int, timeout: float = TIMEOUT) -> list[Received]:
        """Return the next `n` messages not yet taken; fail if they don't arrive in time."""
        want = self._taken + n
        with self._cond:
            ok = self._cond.wait_for(lambda: len(self._messages) >= want, timeout)
            got = self._messages[self._taken : want]
            if not ok:
                raise AssertionError(
                    f"{self.name}: expected {n} message(s) within {timeout}s, got {len(got)}: "
                    f"{[(m.topic, m.payload) for m in got]}"
                )
            self._taken = want
            return got

    def expect_one(self, timeout: float = TIMEOUT) -> Received:
        return self.expect(1, timeout)[0]

    def expect_none(self, within: float = 0.3) -> None:
        """Show that nothing (more) arrives within a short window."""
        with self._cond:
            extra = self._cond.wait_for(lambda: len(self._messages) > self._taken, within)
            if extra:
                got = self._messages[self._taken :]
                raise AssertionError(
                    f"{self.name}: expected no message, got {[(m.topic, m.payload) for m in got]}"
                )


class PahoClient:
    """A paho-mqtt 2.x client with its network loop in paho's own thread.

    `reconnect_on_failure=False`, so a lost connection stays lost (important for will and
    session tests: an automatic reconnect would change what the broker sees).
    """

    def __init__(
        self,
        port: int,
        version: str,
        client_id: str | None = None,
        *,
        clean: bool = True,
        session_expiry: int | None = None,
        will: dict[str, Any] | None = None,
        name: str | None = None,
    ) -> None:
        self.port = port
        self.version = version
        self.client_id = client_id if client_id is not None else unique("paho")
        self.clean = clean
        self.session_expiry = session_expiry
        self.name = name or self.client_id
        self.messages = MessageSink(self.name)
        self.connack: threading.Event = threading.Event()
        self.disconnected: threading.Event = threading.Event()
        self.session_present: bool | None = None
        self.connect_rc: ReasonCode | None = None
        self.connack_properties: Properties | None = None
        self.disconnect_rc: ReasonCode | None = None
        self._lock = threading.Lock()
        self._suback: dict[int, list[ReasonCode]] = {}
        self._suback_cond = threading.Condition(self._lock)
        self._puback: dict[int, ReasonCode] = {}

        v5 = version == "v5"
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=PAHO_PROTOCOL[version],
            clean_session=None if v5 else clean,
            reconnect_on_failure=False,
        )
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.on_publish = self._on_publish
        self.client.on_disconnect = self._on_disconnect
        if will is not None:
            self.client.will_set(
                will["topic"],
                will.get("payload"),
                qos=will.get("qos", 0),
                retain=will.get("retain", False),
                properties=will.get("properties"),
            )

    # -- callbacks (paho's thread) --
    def _on_connect(self, _c, _u, flags, reason_code, properties) -> None:
        self.session_present = bool(flags.session_present)
        self.connect_rc = reason_code
        self.connack_properties = properties
        self.connack.set()

    def _on_message(self, _c, _u, msg) -> None:
        self.messages.add(_from_paho(msg))

    def _on_subscribe(self, _c, _u, mid, reason_codes, _props) -> None:
        with self._suback_cond:
            self._suback[mid] = list(reason_codes)
            self._suback_cond.notify_all()

    def _on_publish(self, _c, _u, mid, reason_code, _props) -> None:
        with self._lock:
            self._puback[mid] = reason_code

    def _on_disconnect(self, _c, _u, _flags, reason_code, _props) -> None:
        self.disconnect_rc = reason_code
        self.disconnected.set()

    # -- actions --
    def connect(self, expect_session_present: bool | None = None) -> PahoClient:
        kwargs: dict[str, Any] = {}
        if self.version == "v5":
            kwargs["clean_start"] = self.clean
            if self.session_expiry is not None:
                props = Properties(PacketTypes.CONNECT)
                props.SessionExpiryInterval = self.session_expiry
                kwargs["properties"] = props
        self.connack.clear()
        self.disconnected.clear()
        self.client.connect(HOST, self.port, keepalive=30, **kwargs)
        self.client.loop_start()
        if not self.connack.wait(TIMEOUT):
            raise AssertionError(f"{self.name}: no CONNACK within {TIMEOUT}s")
        assert self.connect_rc is not None and not self.connect_rc.is_failure, (
            f"{self.name}: CONNECT refused: {self.connect_rc}"
        )
        if expect_session_present is not None:
            assert self.session_present is expect_session_present, (
                f"{self.name}: CONNACK session present = {self.session_present}, "
                f"expected {expect_session_present}"
            )
        return self

    def subscribe(self, topic: str, qos: int = 0, **v5_options: Any) -> list[ReasonCode]:
        if self.version == "v5":
            opts = SubscribeOptions(qos=qos, **v5_options)
            rc, mid = self.client.subscribe(topic, options=opts)
        else:
            rc, mid = self.client.subscribe(topic, qos)
        assert rc == mqtt.MQTT_ERR_SUCCESS, f"{self.name}: subscribe failed locally: {rc}"
        with self._suback_cond:
            if not self._suback_cond.wait_for(lambda: mid in self._suback, TIMEOUT):
                raise AssertionError(f"{self.name}: no SUBACK for {topic!r} within {TIMEOUT}s")
            codes = self._suback[mid]
        assert len(codes) == 1, codes
        granted = codes[0]
        assert not granted.is_failure, f"{self.name}: SUBSCRIBE {topic!r} refused: {granted}"
        assert granted.value == qos, (
            f"{self.name}: SUBSCRIBE {topic!r} granted {granted.value}, requested QoS {qos}"
        )
        return codes

    def publish(
        self,
        topic: str,
        payload: bytes | str | None,
        qos: int = 0,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> None:
        """Publish and wait until the exchange is complete (sent / PUBACK / PUBCOMP)."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS, f"{self.name}: publish failed locally: {info.rc}"
        info.wait_for_publish(TIMEOUT)
        assert info.is_published(), (
            f"{self.name}: QoS {qos} publish to {topic!r} not acknowledged within {TIMEOUT}s"
        )
        if qos > 0:
            with self._lock:
                rc = self._puback.get(info.mid)
            if rc is not None:
                assert not rc.is_failure, f"{self.name}: publish to {topic!r} refused: {rc}"

    def disconnect(self, reason_code: int | None = None) -> None:
        """Normal DISCONNECT (or v5 with the given reason code), then stop the loop."""
        if reason_code is not None:
            self.client.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, identifier=reason_code))
        else:
            self.client.disconnect()
        if not self.disconnected.wait(TIMEOUT):
            raise AssertionError(f"{self.name}: disconnect did not complete within {TIMEOUT}s")
        self.client.loop_stop()

    def abort(self) -> None:
        """Drop the TCP connection without sending DISCONNECT (as a crashed device would)."""
        sock = self.client.socket()
        assert sock is not None, f"{self.name}: not connected"
        sock.shutdown(socket.SHUT_RDWR)
        self.disconnected.wait(TIMEOUT)
        self.client.loop_stop()

    def close(self) -> None:
        """Best-effort cleanup for fixtures."""
        try:
            if self.client.is_connected():
                self.client.disconnect()
                self.disconnected.wait(1)
        except Exception:  # noqa: BLE001 - cleanup must not raise
            pass
        try:
            self.client.loop_stop()
        except Exception:  # noqa: BLE001
            pass


def v5_props(packet_type: int = PacketTypes.PUBLISH, **values: Any) -> Properties:
    props = Properties(packet_type)
    for k, v in values.items():
        setattr(props, k, v)
    return props


# --------------------------------------------------------------------------------------------
# mosquitto_pub / mosquitto_sub (Debian mosquitto-clients)
# --------------------------------------------------------------------------------------------


def _base_args(port: int, version: str) -> list[str]:
    return ["-h", HOST, "-p", str(port), "-V", MOSQ_VERSION[version]]


def mosq_pub(
    port: int,
    version: str,
    topic: str,
    message: str | None = None,
    *,
    qos: int = 0,
    retain: bool = False,
    lines: list[str] | None = None,
    extra: list[str] | tuple[str, ...] = (),
    timeout: float = 10,
) -> subprocess.CompletedProcess[str]:
    """One mosquitto_pub run.

    `message=None` sends a zero-length payload (-n); `lines=[...]` sends each line as one
    message over a single connection (-l), so their order is defined.
    """
    args = ["mosquitto_pub", *_base_args(port, version), "-t", topic, "-q", str(qos)]
    if lines is not None:
        args.append("-l")
    else:
        args += ["-n"] if message is None else ["-m", message]
    if retain:
        args.append("-r")
    args += list(extra)
    proc = subprocess.run(
        args,
        capture_output=True,
        text=True,
        timeout=timeout,
        input="".join(f"{line}\n" for line in lines) if lines is not None else None,
        stdin=subprocess.DEVNULL if lines is None else None,
    )
    assert proc.returncode == 0, (
        f"mosquitto_pub failed (rc={proc.returncode}): {' '.join(args)}\n"
        f"stdout: {proc.stdout}\nstderr: {proc.stderr}"
    )
    return proc


def _json_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """JSON object hook keeping duplicate keys of user-properties as an ordered list."""
    out: dict[str, Any] = {}
    for k, v in pairs:
        out.setdefault("__pairs__", []).append((k, v))
        out[k] = v
    return out


def _from_mosq_json(line: str) -> Received:
    obj = json.loads(line, object_pairs_hook=_json_pairs)
    props = obj.get("properties") or {}
    user = props.get("user-properties") or {}
    corr = props.get("correlation-data")
    return Received(
        topic=obj["topic"],
        payload=(obj.get("payload") or "").encode(),
        qos=int(obj["qos"]),
        retain=bool(obj["retain"]),
        user_properties=[(str(k), str(v)) for k, v in user.get("__pairs__", [])],
        response_topic=props.get("response-topic"),
        correlation_data=corr.encode() if isinstance(corr, str) else corr,
        content_type=props.get("content-type"),
        raw=line,
    )


class MosqProcess:
    """A long-running mosquitto_sub or `mosquitto_pub -l`, with stdout read in a thread.

    Run with -d so that the CONNACK / SUBACK debug lines tell us when it is ready; message
    lines are JSON (`-F %j`).
    """

    def __init__(self, args: list[str], name: str, stdin: bool = False) -> None:
        self.args = args
        self.name = name
        self.messages = MessageSink(name)
        self.lines: list[str] = []
        self.connacked = threading.Event()
        self.subscribed = threading.Event()
        self.proc = subprocess.Popen(
            # mosquitto_* use stdio: block-buffered into a pipe unless told otherwise.
            ["stdbuf", "-oL", *args],
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        self._reader = threading.Thread(target=self._read, name=f"{name}-stdout", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            self.lines.append(line)
            if line.startswith("{"):
                try:
                    self.messages.add(_from_mosq_json(line))
                except (ValueError, KeyError):
                    pass
            elif "received CONNACK" in line:
                self.connacked.set()
            elif "received SUBACK" in line:
                self.subscribed.set()

    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_connected(self) -> MosqProcess:
        if not self.connacked.wait(TIMEOUT):
            self.kill()
            raise AssertionError(f"{self.name}: no CONNACK within {TIMEOUT}s:\n{self.output()}")
        return self

    def wait_subscribed(self) -> MosqProcess:
        if not self.subscribed.wait(TIMEOUT):
            self.kill()
            raise AssertionError(f"{self.name}: no SUBACK within {TIMEOUT}s:\n{self.output()}")
        return self

    def wait_exit(self, timeout: float = TIMEOUT) -> int:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"{self.name}: did not exit within {timeout}s:\n{self.output()}"
            ) from None
        self._reader.join(TIMEOUT)
        return rc

    def send_line(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def close_stdin(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()

    def kill(self) -> None:
        """SIGKILL: the OS closes the socket, no DISCONNECT is sent."""
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            pass
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except OSError:
                pass


def mosq_sub(
    port: int,
    version: str,
    topics: str | list[str],
    *,
    qos: int = 0,
    count: int | None = None,
    wait_secs: int = 10,
    client_id: str | None = None,
    persistent: bool = False,
    session_expiry: int | None = None,
    extra: list[str] | tuple[str, ...] = (),
    name: str = "mosquitto_sub",
) -> MosqProcess:
    """Start mosquitto_sub; call .wait_subscribed() before publishing to it."""
    args = ["mosquitto_sub", *_base_args(port, version), "-q", str(qos), "-d", "-F", "%j"]
    for t in [topics] if isinstance(topics, str) else topics:
        args += ["-t", t]
    if count is not None:
        args += ["-C", str(count)]
    args += ["-W", str(wait_secs)]
    if client_id is not None:
        args += ["-i", client_id]
    if persistent:
        args.append("-c")
    if session_expiry is not None:
        args += ["-x", str(session_expiry)]
    args += list(extra)
    return MosqProcess(args, name)


def mosq_pub_lines(
    port: int,
    version: str,
    topic: str,
    *,
    client_id: str | None = None,
    extra: list[str] | tuple[str, ...] = (),
    name: str = "mosquitto_pub -l",
) -> MosqProcess:
    """A connected mosquitto_pub that publishes each stdin line (-l) and stays connected."""
    args = ["mosquitto_pub", *_base_args(port, version), "-t", topic, "-l", "-d"]
    if client_id is not None:
        args += ["-i", client_id]
    args += list(extra)
    return MosqProcess(args, name, stdin=True)


def wait_until(pred, timeout: float = TIMEOUT, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
