"""A `tern serve` process for tests: the real binary (`target/debug/tern`, or TERN_BIN),
started hermetically (no TERN_* variable of the caller's leaks in; its own working
directory; the admin API on a free port) and ready once it logs its MQTT listener's address.

Shared by tests/python (through its conftest.py) and tests/observability (which puts this
directory on sys.path).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_RE = re.compile(r"MQTT listener ready kind=tcp addr=(\S+)")
ADMIN_RE = re.compile(r"admin API listening addr=(\S+)")
ANSI_RE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0


def tern_bin() -> Path:
    return Path(os.environ.get("TERN_BIN", REPO_ROOT / "target" / "debug" / "tern"))


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The caller's environment for a `tern` process: hermetic, since tern reads every TERN_*
    variable as configuration (and rejects unknown keys), so none leaks in from the caller
    (TERN_BIN, TERN_TEST_*, a developer's shell); plus NO_COLOR and what the caller passes."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TERN_")}
    env["NO_COLOR"] = "1"
    env.update(extra or {})
    return env


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
        # The admin API on a free port: tests run brokers side by side, none may take 8080.
        full_env = clean_env({"TERN_ADMIN__ADDR": "127.0.0.1:0", **(env or {})})
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

    def admin_addr(self, timeout: float = 10.0) -> str:
        """The admin API's address (`host:port`), from the line `tern serve` logs when it
        listens: `admin API listening addr=127.0.0.1:43817 ...`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = ADMIN_RE.search(self.log())
            if m:
                return m.group(1)
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        pytest.fail(f"tern did not log 'admin API listening addr=...':\n{self.log()}", pytrace=False)

    def admin_url(self, timeout: float = 10.0) -> str:
        """`http://host:port` of the admin API (plain HTTP: no admin TLS configured)."""
        return f"http://{self.admin_addr(timeout)}"

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
