"""Fixtures for the interop tests: the real `tern` binary plus independent MQTT clients.

The broker under test is `target/debug/tern` (override with TERN_BIN=/path/to/tern). Each test
gets its own broker on an ephemeral port (`--mqtt-addr 127.0.0.1:0`); the port is read from the
ready line tern logs to stderr:  `MQTT listener ready kind=tcp addr=127.0.0.1:43211`.

Developer self-check: TERN_PYTEST_BROKER=mosquitto runs the same tests against a local
Mosquitto (`mosquitto` from Debian) to show the tests themselves are right. CI never sets it.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
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

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_RE = re.compile(r"MQTT listener ready kind=tcp addr=(\S+)")
ANSI_RE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
REFERENCE = os.environ.get("TERN_PYTEST_BROKER", "tern")


def tern_bin() -> Path:
    return Path(os.environ.get("TERN_BIN", REPO_ROOT / "target" / "debug" / "tern"))


def split_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


class TernServer:
    """A running `tern serve` process."""

    kind = "tern"

    def __init__(
        self,
        args: list[str] | None = None,
        env: dict[str, str] | None = None,
        mqtt_addr: str | None = "127.0.0.1:0",
    ) -> None:
        binary = tern_bin()
        if not binary.is_file():
            pytest.fail(
                f"tern binary not found at {binary}: run `cargo build -p tern-server` "
                "(or set TERN_BIN)",
                pytrace=False,
            )
        cmd = [str(binary), "serve"]
        if mqtt_addr is not None:
            cmd += ["--mqtt-addr", mqtt_addr]
        cmd += list(args or [])
        # Hermetic: tern reads every TERN_* variable as configuration (and rejects unknown
        # keys), so none leaks in from the caller (TERN_BIN, TERN_TEST_*, a developer's shell);
        # a test passes what it wants explicitly.
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("TERN_")}
        full_env.setdefault("NO_COLOR", "1")
        # The admin API on a free port: tests run brokers side by side, none may take 8080.
        full_env["TERN_ADMIN__ADDR"] = "127.0.0.1:0"
        full_env.update(env or {})
        self.cmd = cmd
        self.lines: list[str] = []
        self._lines_lock = threading.Lock()
        self._ready = threading.Event()
        self.addr: str | None = None
        self.workdir = tempfile.mkdtemp(prefix="tern-pytest-")
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=full_env,
            # Own working directory: anything tern writes relative to it (data files) stays
            # per test and is removed at teardown.
            cwd=self.workdir,
        )
        self._threads = [
            threading.Thread(target=self._drain, args=(self.proc.stderr, ""), daemon=True),
            threading.Thread(target=self._drain, args=(self.proc.stdout, "[stdout] "), daemon=True),
        ]
        for t in self._threads:
            t.start()
        self._wait_ready()

    def _drain(self, stream: Any, prefix: str) -> None:
        for raw in iter(stream.readline, b""):
            line = ANSI_RE.sub("", raw.decode("utf-8", "replace").rstrip("\n"))
            with self._lines_lock:
                self.lines.append(prefix + line)
            if not prefix and self.addr is None:
                m = READY_RE.search(line)
                if m:
                    self.addr = m.group(1)
                    self._ready.set()
        stream.close()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while not self._ready.wait(0.05):
            if self.proc.poll() is not None:
                time.sleep(0.1)  # let the drain threads catch the last lines
                pytest.fail(
                    f"tern exited with code {self.proc.returncode} before its listener was "
                    f"ready.\ncommand: {' '.join(self.cmd)}\n--- tern output ---\n{self.log()}",
                    pytrace=False,
                )
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail(
                    f"tern did not log 'MQTT listener ready kind=tcp addr=...' within "
                    f"{START_TIMEOUT}s.\ncommand: {' '.join(self.cmd)}\n--- tern output ---\n"
                    f"{self.log()}",
                    pytrace=False,
                )
        self.host, self.port = split_addr(self.addr or "")

    def log(self) -> str:
        with self._lines_lock:
            return "\n".join(self.lines)

    def running(self) -> bool:
        return self.proc.poll() is None

    def terminate(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM and wait; returns the exit code, or None if it had to be killed."""
        if self.proc.poll() is not None:
            return self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def join_logs(self) -> None:
        for t in self._threads:
            t.join(2)

    def cleanup(self) -> None:
        self.kill()
        shutil.rmtree(self.workdir, ignore_errors=True)


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


__all__ = ["TIMEOUT", "TernServer"]
