"""Just enough MQTT (3.1, 3.1.1 and 5.0) over a plain socket to script exact workloads.

paho-mqtt acknowledges every message it receives and retries on its own; the metric tests
need clients that do exactly what they are told: a subscriber that never acknowledges (so
its in-flight window stays full and its queue overflows), a CONNECT with a wrong password
read back as a CONNACK code, a 3.1 CONNECT. Every read has a timeout.
"""

from __future__ import annotations

import socket
import struct

from mqttutil import HOST, TIMEOUT

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, DISCONNECT = 8, 9, 14
# Protocol levels.
V31, V311, V5 = 3, 4, 5
PROTOCOL_NAME = {V31: "MQIsdp", V311: "MQTT", V5: "MQTT"}
# MQTT 5 property identifiers used here.
RECEIVE_MAXIMUM = 0x21


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n % 128, n // 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def string(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(b)) + b


def packet(kind: int, flags: int, body: bytes) -> bytes:
    return bytes([(kind << 4) | flags]) + varint(len(body)) + body


def read_varint(data: bytes, i: int) -> tuple[int, int]:
    n, mult = 0, 1
    while True:
        b = data[i]
        i += 1
        n += (b & 0x7F) * mult
        if not b & 0x80:
            return n, i
        mult *= 128


class Closed(Exception):
    """The broker closed the connection."""


class RawClient:
    """One MQTT connection driven packet by packet."""

    def __init__(self, port: int, version: int = V5, host: str = HOST) -> None:
        self.version = version
        self.sock = socket.create_connection((host, port), timeout=TIMEOUT)
        self.sock.settimeout(TIMEOUT)
        self.buf = b""

    # -- wire --
    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, n: int) -> None:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise Closed(f"connection closed with {len(self.buf)} byte(s) pending")
            self.buf += chunk

    def read(self) -> tuple[int, int, bytes]:
        """The next packet: (type, flags, body)."""
        self._fill(2)
        i = 1
        while True:
            self._fill(i + 1)
            if not self.buf[i] & 0x80:
                break
            i += 1
        length, start = read_varint(self.buf, 1)
        self._fill(start + length)
        head, body = self.buf[0], self.buf[start : start + length]
        self.buf = self.buf[start + length :]
        return head >> 4, head & 0x0F, body

    def expect(self, kind: int) -> bytes:
        got, _, body = self.read()
        assert got == kind, f"expected packet type {kind}, got {got} ({body!r})"
        return body

    def wait_closed(self, timeout: float = TIMEOUT) -> None:
        """Wait until the broker closes the connection (anything it sends first is skipped)."""
        self.sock.settimeout(timeout)
        try:
            while self.sock.recv(65536):
                pass
        except ConnectionResetError:
            pass

    def nothing_pending(self, within: float = 0.3) -> bool:
        """Whether nothing arrives within a short window (shows that something did NOT)."""
        if self.buf:
            return False
        self.sock.settimeout(within)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return True
        finally:
            self.sock.settimeout(TIMEOUT)
        self.buf += data
        return False

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    # -- packets --
    def connect(
        self,
        client_id: str,
        username: str | None = None,
        password: str | None = None,
        *,
        clean: bool = True,
        keepalive: int = 60,
        receive_maximum: int | None = None,
    ) -> tuple[bool, int]:
        """CONNECT; returns the CONNACK's (session present, reason / return code)."""
        flags = 0x02 if clean else 0
        if username is not None:
            flags |= 0x80
        if password is not None:
            flags |= 0x40
        body = string(PROTOCOL_NAME[self.version]) + bytes([self.version, flags])
        body += struct.pack("!H", keepalive)
        if self.version == V5:
            props = b""
            if receive_maximum is not None:
                props += bytes([RECEIVE_MAXIMUM]) + struct.pack("!H", receive_maximum)
            body += varint(len(props)) + props
        body += string(client_id)
        if username is not None:
            body += string(username)
        if password is not None:
            body += string(password)
        self.send(packet(CONNECT, 0, body))
        ack = self.expect(CONNACK)
        return bool(ack[0] & 1), ack[1]

    def subscribe(self, packet_id: int, topic: str, qos: int) -> int:
        """SUBSCRIBE one filter; returns the SUBACK's reason code / granted QoS."""
        body = struct.pack("!H", packet_id)
        if self.version == V5:
            body += varint(0)
        body += string(topic) + bytes([qos])
        self.send(packet(SUBSCRIBE, 0x02, body))
        ack = self.expect(SUBACK)
        assert struct.unpack("!H", ack[:2])[0] == packet_id, ack
        i = 2
        if self.version == V5:
            n, i = read_varint(ack, 2)
            i += n
        return ack[i]

    def publish(self, topic: str, payload: bytes, qos: int = 0, packet_id: int | None = None) -> None:
        body = string(topic)
        if qos:
            assert packet_id is not None
            body += struct.pack("!H", packet_id)
        if self.version == V5:
            body += varint(0)
        self.send(packet(PUBLISH, qos << 1, body + payload))

    def puback_code(self, packet_id: int) -> int:
        """Read a PUBACK for `packet_id`; its reason code (0 when the packet omits it)."""
        ack = self.expect(PUBACK)
        assert struct.unpack("!H", ack[:2])[0] == packet_id, ack
        return ack[2] if len(ack) > 2 else 0

    def read_publish(self) -> tuple[str, int, bytes]:
        """The next PUBLISH: (topic, QoS, payload); it is not acknowledged."""
        kind, flags, body = self.read()
        assert kind == PUBLISH, f"expected PUBLISH, got packet type {kind}"
        qos = (flags >> 1) & 3
        (n,) = struct.unpack("!H", body[:2])
        topic, i = body[2 : 2 + n].decode(), 2 + n
        if qos:
            i += 2
        if self.version == V5:
            plen, i = read_varint(body, i)
            i += plen
        return topic, qos, body[i:]

    def disconnect(self) -> None:
        """DISCONNECT (normal), then wait for the broker to close the socket."""
        self.send(packet(DISCONNECT, 0, b"\x00" if self.version == V5 else b""))
        self.wait_closed()
        self.close()


def connack_refused(port: int, version: int, client_id: str, username: str, password: str) -> int:
    """One CONNECT that must be refused: its CONNACK code, after which the broker closes."""
    c = RawClient(port, version)
    try:
        _, code = c.connect(client_id, username, password)
        assert code != 0, f"CONNECT of {client_id!r} with a wrong password was accepted"
        c.wait_closed()
        return code
    finally:
        c.close()

