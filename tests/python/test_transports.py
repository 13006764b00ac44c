"""Transports with independent clients: paho-mqtt over WebSocket and WebSocket over TLS, and
mosquitto_pub/_sub over TLS with client certificates (mutual TLS).

Certificates are made per module with the `openssl` CLI: a CA, a server certificate for
127.0.0.1/localhost, a device certificate signed by the CA, and one signed by another CA.
The broker gets a config file with one listener of each kind (all on 127.0.0.1:0) and logs
`MQTT listener ready kind=<kind> addr=<ip:port> name=<name>` for each.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from paho.mqtt.client import WebsocketConnectionError

from conftest import REFERENCE, TernServer, split_addr
from mqttutil import HOST, TIMEOUT, PahoClient, mosq_pub, mosq_sub, unique

pytestmark = pytest.mark.skipif(
    REFERENCE == "mosquitto", reason="tern listener configuration (not a reference-broker test)"
)

LISTENER_RE = re.compile(r"MQTT listener ready kind=(\w+) addr=(\S+) name=(\S+)")


def openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    assert proc.returncode == 0, f"openssl {' '.join(args)} failed:\n{proc.stderr}"


def make_ca(d: Path, name: str, cn: str) -> None:
    openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN={cn}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=d,
    )  # fmt: skip


def make_leaf(d: Path, name: str, ca: str, cn: str, ext: str) -> None:
    (d / f"{name}.ext").write_text(ext)
    openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}",
        cwd=d,
    )  # fmt: skip
    openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-days", "2", "-out", f"{name}.pem", "-extfile", f"{name}.ext",
        cwd=d,
    )  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    make_ca(d, "ca", "Tern Test CA")
    make_leaf(
        d, "server", "ca", "tern-server",
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
        "keyUsage=critical,digitalSignature\n",
    )  # fmt: skip
    client_ext = "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature\n"
    make_leaf(d, "device", "ca", "device-1", client_ext)
    make_ca(d, "rogue-ca", "Rogue CA")
    make_leaf(d, "rogue", "rogue-ca", "intruder", client_ext)
    return d


class Listeners:
    """The broker and the address of each named listener."""

    def __init__(self, server: TernServer, pki: Path) -> None:
        self.server = server
        self.pki = pki
        self.ports: dict[str, int] = {}
        deadline = time.monotonic() + TIMEOUT
        while len(self.ports) < 5:
            for line in server.log().splitlines():
                m = LISTENER_RE.search(line)
                if m:
                    self.ports[m.group(3)] = split_addr(m.group(2))[1]
            if time.monotonic() > deadline:
                pytest.fail(f"not every listener is ready:\n{server.log()}", pytrace=False)
            time.sleep(0.02)

    def ca(self) -> str:
        return str(self.pki / "ca.pem")


@pytest.fixture
def listeners(pki: Path, tmp_path: Path, tern_factory) -> Iterator[Listeners]:
    def tls(name: str, kind: str, extra: str = "") -> str:
        return (
            f'[[listeners]]\nname = "{name}"\nkind = "{kind}"\nbind = "127.0.0.1:0"\n'
            f'cert_file = "{pki / "server.pem"}"\nkey_file = "{pki / "server.key"}"\n{extra}\n'
        )

    config = tmp_path / "tern.toml"
    config.write_text(
        '[[listeners]]\nname = "tcp"\nkind = "tcp"\nbind = "127.0.0.1:0"\n\n'
        '[[listeners]]\nname = "ws"\nkind = "ws"\nbind = "127.0.0.1:0"\n\n'
        + tls("wss", "wss")
        + tls("tls", "tls")
        + tls("mtls", "tls", f'ca_file = "{pki / "ca.pem"}"\nclient_certs = "required"\n')
    )
    server = tern_factory(env={"TERN_CONFIG": str(config)})
    yield Listeners(server, pki)
    rc = server.terminate()
    assert rc == 0, f"tern exited with {rc} on SIGTERM:\n{server.log()}"


def ws_client(port: int, version: str, *, tls_ca: str | None = None, path: str = "/mqtt") -> PahoClient:
    c = PahoClient(port, version, name=unique("paho-ws"))
    c.client.transport = "websockets"
    c.client.ws_set_options(path=path)
    if tls_ca is not None:
        c.client.tls_set(ca_certs=tls_ca)
    return c


def tls_args(l: Listeners, cert: str | None = "device") -> list[str]:
    args = ["--cafile", l.ca()]
    if cert is not None:
        args += ["--cert", str(l.pki / f"{cert}.pem"), "--key", str(l.pki / f"{cert}.key")]
    return args


def test_paho_websocket_pub_sub_with_tcp_clients(listeners: Listeners, version: str, topic: str) -> None:
    ws = ws_client(listeners.ports["ws"], version).connect()
    ws.subscribe(topic + "/in", 1)
    tcp = PahoClient(listeners.ports["tcp"], version).connect()
    tcp.subscribe(topic + "/out", 1)
    try:
        mosq_pub(listeners.ports["tcp"], version, topic + "/in", "tcp to ws", qos=1)
        got = ws.messages.expect_one()
        assert (got.topic, got.payload) == (topic + "/in", b"tcp to ws")
        # Larger than one TCP segment: the packet spans several reads on the broker side.
        big = bytes(range(256)) * 400
        ws.publish(topic + "/out", big, qos=1)
        got = tcp.messages.expect_one()
        assert got.payload == big
    finally:
        ws.close()
        tcp.close()


def test_paho_websocket_wrong_path_is_refused(listeners: Listeners) -> None:
    c = ws_client(listeners.ports["ws"], "v311", path="/not-mqtt")
    try:
        with pytest.raises((WebsocketConnectionError, OSError)):
            c.connect()
    finally:
        c.close()


def test_paho_secure_websocket_pub_sub(listeners: Listeners, version: str, topic: str) -> None:
    wss = ws_client(listeners.ports["wss"], version, tls_ca=listeners.ca()).connect()
    wss.subscribe(topic, 1)
    try:
        mosq_pub(listeners.ports["tcp"], version, topic, "tcp to wss", qos=1)
        got = wss.messages.expect_one()
        assert (got.topic, got.payload, got.qos) == (topic, b"tcp to wss", 1)
        wss.publish(topic, b"wss to itself", qos=1)
        assert wss.messages.expect_one().payload == b"wss to itself"
    finally:
        wss.close()


def test_mosquitto_mutual_tls_pub_sub(listeners: Listeners, version: str, topic: str) -> None:
    port = listeners.ports["mtls"]
    sub = mosq_sub(port, version, topic, qos=1, count=1, extra=tls_args(listeners))
    try:
        sub.wait_subscribed()
        mosq_pub(port, version, topic, "over mutual tls", qos=1, extra=tls_args(listeners))
        got = sub.messages.expect_one()
        assert (got.topic, got.payload) == (topic, b"over mutual tls")
        assert sub.wait_exit() == 0
    finally:
        sub.kill()


@pytest.mark.parametrize("tls_version", ["tlsv1.2", "tlsv1.3"])
def test_mosquitto_tls_versions(listeners: Listeners, tls_version: str, topic: str) -> None:
    port = listeners.ports["tls"]
    args = [*tls_args(listeners, cert=None), "--tls-version", tls_version]
    sub = mosq_sub(port, "v5", topic, count=1, extra=args)
    try:
        sub.wait_subscribed()
        mosq_pub(port, "v5", topic, tls_version, extra=args)
        assert sub.messages.expect_one().payload == tls_version.encode()
    finally:
        sub.kill()


@pytest.mark.parametrize("cert", [None, "rogue"], ids=["no-certificate", "foreign-ca"])
def test_mosquitto_mutual_tls_refuses_bad_clients(listeners: Listeners, cert: str | None) -> None:
    args = [
        "mosquitto_pub", "-h", HOST, "-p", str(listeners.ports["mtls"]), "-V", "mqttv311",
        "-t", "refused/t", "-m", "x", "-q", "1", *tls_args(listeners, cert=cert),
    ]  # fmt: skip
    proc = subprocess.run(args, capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
    assert proc.returncode != 0, f"mosquitto_pub succeeded without a valid certificate: {proc}"
    deadline = time.monotonic() + TIMEOUT
    while "client certificate refused" not in listeners.server.log():
        assert time.monotonic() < deadline, f"no refusal logged:\n{listeners.server.log()}"
        time.sleep(0.02)
