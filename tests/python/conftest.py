"""Fixtures for the interop tests: the real `tern` binary plus independent MQTT clients.

The broker under test is `target/debug/tern` (override with TERN_BIN=/path/to/tern). Each test
gets its own broker on an ephemeral port (`--mqtt-addr 127.0.0.1:0`); the port is read from the
ready line tern logs to stderr:  `MQTT listener ready kind=tcp addr=127.0.0.1:43211`.

Developer self-check: TERN_PYTEST_BROKER=mosquitto runs the same tests against a local
Mosquitto (`mosquitto` from Debian) to show the tests themselves are right. CI never sets it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mqttutil import (
    HOST,
    TIMEOUT,
    VERSIONS,
    MosqProcess,
    PahoClient,
    mosq_pub,
    mosq_pub_lines,
    mosq_sub,
    unique,
)
from ternserver import STOP_TIMEOUT, START_TIMEOUT, TernServer, split_addr, tern_bin

REFERENCE = os.environ.get("TERN_PYTEST_BROKER", "tern")


class MosquittoServer:
    """Reference broker for TERN_PYTEST_BROKER=mosquitto (developer self-check only)."""

    kind = "mosquitto"

    def __init__(self, **_ignored: Any) -> None:
        with socket.socket() as s:
            s.bind((HOST, 0))
            self.port = s.getsockname()[1]
        self.host = HOST
        self.addr = f"{HOST}:{self.port}"
        self._dir = tempfile.mkdtemp(prefix="mosq-pytest-")
        conf = Path(self._dir) / "mosquitto.conf"
        conf.write_text(f"listener {self.port} {HOST}\nallow_anonymous true\n")
        self._logf = open(Path(self._dir) / "log", "w+")  # noqa: SIM115
        self.proc = subprocess.Popen(
            ["mosquitto", "-c", str(conf), "-v"], stdout=self._logf, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                socket.create_connection((HOST, self.port), 0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    pytest.fail(f"mosquitto did not start:\n{self.log()}", pytrace=False)
                time.sleep(0.02)

    def log(self) -> str:
        try:
            self._logf.flush()
            return (Path(self._dir) / "log").read_text()
        except (OSError, ValueError):
            return "(mosquitto log already removed)"

    def running(self) -> bool:
        return self.proc.poll() is None

    def terminate(self, timeout: float = STOP_TIMEOUT) -> int | None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                return None
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def join_logs(self) -> None:
        pass

    def cleanup(self) -> None:
        self.kill()
        self._logf.close()
        shutil.rmtree(self._dir, ignore_errors=True)


def start_broker(**kwargs: Any) -> TernServer | MosquittoServer:
    if REFERENCE == "mosquitto":
        return MosquittoServer(**kwargs)
    return TernServer(**kwargs)


def _remember(request: pytest.FixtureRequest, server: Any) -> None:
    servers = getattr(request.node, "_tern_servers", None)
    if servers is None:
        servers = []
        request.node._tern_servers = servers
    servers.append(server)


@pytest.fixture
def broker(request: pytest.FixtureRequest) -> Iterator[TernServer | MosquittoServer]:
    """A fresh broker for this test, stopped (SIGTERM) at teardown."""
    server = start_broker()
    _remember(request, server)
    yield server
    crashed = not server.running()
    rc = server.proc.returncode
    server.terminate()
    server.join_logs()
    log = server.log()
    server.cleanup()
    if crashed:
        pytest.fail(
            f"{server.kind} exited during the test with code {rc}\n--- output ---\n{log}",
            pytrace=False,
        )


@pytest.fixture
def tern_factory(request: pytest.FixtureRequest) -> Iterator[Any]:
    """Start extra brokers with custom args/env; all are killed at teardown."""
    started: list[TernServer] = []

    def factory(**kwargs: Any) -> TernServer:
        server = TernServer(**kwargs)
        started.append(server)
        _remember(request, server)
        return server

    yield factory
    for server in started:
        server.cleanup()


@pytest.fixture(params=VERSIONS)
def version(request: pytest.FixtureRequest) -> str:
    """MQTT protocol version: 'v311' or 'v5'."""
    return request.param


@pytest.fixture
def topic() -> str:
    """A topic no other test uses."""
    return unique("tern-it") + "/t"


class Clients:
    """Factory for clients bound to the test's broker; everything is cleaned up at teardown."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.port: int = server.port
        self._paho: list[PahoClient] = []
        self._procs: list[MosqProcess] = []

    def paho(self, version: str, client_id: str | None = None, **kwargs: Any) -> PahoClient:
        c = PahoClient(self.port, version, client_id, **kwargs)
        self._paho.append(c)
        return c

    def paho_sub(self, version: str, topic: str, qos: int = 0, **kwargs: Any) -> PahoClient:
        c = self.paho(version, **kwargs).connect()
        c.subscribe(topic, qos)
        return c

    def mosq_sub(self, version: str, topics: str | list[str], **kwargs: Any) -> MosqProcess:
        p = mosq_sub(self.port, version, topics, **kwargs)
        self._procs.append(p)
        return p

    def mosq_pub_lines(self, version: str, topic: str, **kwargs: Any) -> MosqProcess:
        p = mosq_pub_lines(self.port, version, topic, **kwargs)
        self._procs.append(p)
        return p

    def mosq_pub(self, version: str, topic: str, message: str | None = None, **kwargs: Any):
        return mosq_pub(self.port, version, topic, message, **kwargs)

    def close(self) -> None:
        for c in self._paho:
            c.close()
        for p in self._procs:
            p.kill()


@pytest.fixture
def clients(broker: Any) -> Iterator[Clients]:
    c = Clients(broker)
    yield c
    c.close()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Attach the broker's log to failing tests (shown by pytest under the failure)."""
    report = yield
    if report.failed:
        for i, server in enumerate(getattr(item, "_tern_servers", [])):
            log = server.log()
            tail = "\n".join(log.splitlines()[-200:])
            report.sections.append((f"{server.kind} #{i} log (last 200 lines)", tail))
    return report


def pytest_report_header(config: pytest.Config) -> list[str]:
    if REFERENCE == "mosquitto":
        return ["broker under test: REFERENCE mosquitto (TERN_PYTEST_BROKER=mosquitto)"]
    return [f"broker under test: {tern_bin()}"]


__all__ = ["TIMEOUT", "TernServer", "split_addr", "tern_bin"]
