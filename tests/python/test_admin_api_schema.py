"""The admin REST API against its own OpenAPI document, with schemathesis.

Each test starts one `tern serve` with its own SQLite database in its working directory,
creates the first admin with the CLI (`tern admin add-user --password-stdin`, as an operator
would), logs in, and gives the broker something to show: a device connected with its
credentials, an anonymous MQTT 3.1.1 client, an offline persistent session with
subscriptions and queued messages, retained messages (text with MQTT 5 properties, and
binary), an ACL rule, a second admin user and an API key. Then every response must:

- not be a server error (5xx): bad input is the client's fault and must be answered as such;
- have a status code the document lists for the operation;
- have the content type the document lists for that status;
- have a body that matches the schema the document gives for it, and the headers it declares;
- for a request that breaks a constraint the document states, be a refusal (4xx).

`test_admin_api_matches_its_openapi_document` lets schemathesis read the document the broker
serves (`/api/v1/openapi.json`) and send every operation generated requests, valid and
invalid, with `Authorization: Bearer <token>`. Generated path parameters almost never name a
resource that exists, so `test_admin_api_answers_on_real_resources` then validates each
operation on a path parameter naming one of the seeded resources, through the same checks.

A failure says which: either the API or the document is wrong, and the fix goes in
crates/tern-admin (then `TERN_TEST_UPDATE_OPENAPI=1 cargo test -p tern-admin --test openapi`
refreshes openapi/tern.json).

Left out of the generated requests: `GET /api/v1/stream` (an endless server-sent event
stream: no response to validate ever ends). `POST /api/v1/auth/logout` gets a login of its
own for each call, so that it cannot revoke the token the other operations use; likewise a
generated change to the test's own admin user (`root`) is not sent.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, assume, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from conftest import REFERENCE, TernServer, tern_bin
from mqttutil import PahoClient, v5_props, wait_until
from ternserver import clean_env

pytestmark = pytest.mark.skipif(
    REFERENCE != "tern", reason="tern's admin API; not applicable to the reference broker"
)

ADMIN_USER = "root"
ADMIN_PASSWORD = "schemathesis-root-password"
# Relative to the broker's working directory (TernServer gives each broker its own): the
# broker and the CLI open the same file.
DATABASE_URL = "sqlite://data/tern.db"

# Examples per operation (a deeper run: TERN_PYTEST_SCHEMA_EXAMPLES=500; the TERN_PYTEST_
# prefix is reserved for tooling, so tern accepts it in its environment), and the longest one
# request may take (a login or a password change hashes with argon2; a debug build is slow).
MAX_EXAMPLES = int(os.environ.get("TERN_PYTEST_SCHEMA_EXAMPLES", "25"))
DEADLINE_MS = 5000

# What every response is checked for. negative_data_rejection: a request the document calls
# invalid (a constraint it states is broken) must be refused with a 4xx, so every constraint
# the document states is one the API enforces. Its converse, positive_data_acceptance, is
# left out: some rules cannot be said in JSON Schema (a topic filter's syntax in
# `/acl/check`, an opaque cursor, "`payload` or `payload_base64`, not both"), so a request
# the document allows may still be refused, with a 400 that the document lists.
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]

# The seeded resources.
DEVICE = "sch-device"
DEVICE_USER = "sch-device-user"
DEVICE_PASSWORD = "sch-device-password"
V311_CLIENT = "sch-v311"
OFFLINE_CLIENT = "sch-offline"
TEXT_TOPIC = "sch/retained/text"
BINARY_TOPIC = "sch/retained/binary"
OTHER_ADMIN = "sch-other-admin"


class AdminApi:
    """The admin API of one broker, logged in as `root`, and what was seeded in it."""

    def __init__(self, server: TernServer, base: str) -> None:
        self.server = server
        self.base = base
        self.token = self.login()
        self.clients: list[PahoClient] = []
        self.rule_id: int | None = None
        self.key_id: str | None = None
        self.api_key: str | None = None

    def login(self) -> str:
        r = requests.post(
            f"{self.base}/api/v1/auth/login",
            json={"username": ADMIN_USER, "password": ADMIN_PASSWORD},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        return r.json()["access_token"]

    def headers(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.token}"}

    def call(self, method: str, path: str, body: Any = None, expect: int = 200) -> Any:
        r = requests.request(
            method, f"{self.base}{path}", json=body, headers=self.headers(), timeout=30
        )
        assert r.status_code == expect, f"{method} {path}: {r.status_code} {r.text}"
        return r.json() if r.content else None

    def seed(self) -> None:
        port = self.server.port
        self.call("POST", "/api/v1/devices", expect=201, body={
            "client_id": DEVICE,
            "username": DEVICE_USER,
            "password": DEVICE_PASSWORD,
            "scram": True,
            "labels": {"site": "lab", "kind/sensor": "t1"},
        })
        rule = self.call("POST", "/api/v1/acl/rules", expect=201, body={
            "permission": "allow",
            "action": "publish",
            "topic": "sch/%c/#",
            "client_id": DEVICE,
            "max_qos": 1,
            "no_retain": True,
        })
        self.rule_id = rule["id"]
        self.call("POST", "/api/v1/admin/users", expect=201, body={
            "username": OTHER_ADMIN,
            "role": "viewer",
            "password": "another-long-password",
        })
        key = self.call("POST", "/api/v1/admin/api-keys", expect=201, body={
            "name": "schemathesis",
            "role": "operator",
            "expires_in_days": 1,
        })
        self.key_id = key["api_key"]["id"]
        self.api_key = key["key"]

        # A device connected with its credentials (MQTT 5), subscribed with options.
        device = self.client(port, "v5", DEVICE)
        device.client.username_pw_set(DEVICE_USER, DEVICE_PASSWORD)
        device.connect()
        device.subscribe("sch/cmd/#", 1, noLocal=True, retainAsPublished=True, retainHandling=1)
        # An anonymous MQTT 3.1.1 client.
        self.client(port, "v311", V311_CLIENT).connect()
        # A persistent session, offline, with a subscription and queued messages. Its expiry
        # and the retained message's are over 2^31 (MQTT's four-byte integers are unsigned).
        offline = self.client(port, "v5", OFFLINE_CLIENT, clean=False, session_expiry=3_000_000_000)
        offline.connect()
        offline.subscribe("sch/queue/#", 1)
        offline.disconnect()
        publisher = self.client(port, "v5", "sch-publisher").connect()
        for i in range(3):
            publisher.publish(f"sch/queue/{i}", f"queued {i}", qos=1)
        publisher.publish(
            TEXT_TOPIC,
            "twenty-one degrees",
            qos=1,
            retain=True,
            properties=v5_props(
                ContentType="text/plain",
                ResponseTopic="sch/replies",
                CorrelationData=b"\x00\x01corr",
                UserProperty=[("unit", "celsius"), ("unit", "kelvin")],
                MessageExpiryInterval=3_000_000_000,
                PayloadFormatIndicator=1,
            ),
        )
        publisher.publish(BINARY_TOPIC, b"\xff\xfe\x00binary", qos=0, retain=True)
        wait_until(
            lambda: requests.get(
                f"{self.base}/api/v1/retained/{BINARY_TOPIC}", headers=self.headers(), timeout=30
            ).status_code == 200,
            what="the retained messages",
        )

    def client(self, *args: Any, **kwargs: Any) -> PahoClient:
        c = PahoClient(*args, **kwargs)
        self.clients.append(c)
        return c

    def close(self) -> None:
        for c in self.clients:
            c.close()


@pytest.fixture
def admin_api(tern_factory: Any) -> Iterator[AdminApi]:
    env = {
        "TERN_DATABASE__URL": DATABASE_URL,
        # Schemathesis sends many failing logins: no lockout (0 = unlimited).
        "TERN_ADMIN__LOGIN_ATTEMPTS_PER_IP": "0",
        "TERN_ADMIN__LOGIN_FAILURES_PER_USER": "0",
    }
    server = tern_factory(env=env)
    host, _, port = server.admin_addr().rpartition(":")
    add = subprocess.run(
        [str(tern_bin()), "admin", "add-user", "--username", ADMIN_USER, "--role", "admin",
         "--password-stdin"],
        input=ADMIN_PASSWORD + "\n",
        capture_output=True,
        text=True,
        cwd=server.workdir,
        env=clean_env({"TERN_DATABASE__URL": DATABASE_URL}),
        timeout=60,
    )
    assert add.returncode == 0, f"tern admin add-user failed:\n{add.stdout}\n{add.stderr}"
    api = AdminApi(server, f"http://{host}:{port}")
    try:
        api.seed()
        yield api
    finally:
        api.close()


@pytest.fixture
def api_schema(admin_api: AdminApi) -> Any:
    return schemathesis.openapi.from_url(f"{admin_api.base}/api/v1/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema").exclude(path="/api/v1/stream")


# About 35 s with 25 examples on 2 cores; the bound grows with a deeper run.
@pytest.mark.timeout(120 + 3 * MAX_EXAMPLES)
@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=DEADLINE_MS,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_admin_api_matches_its_openapi_document(case: Any, admin_api: AdminApi) -> None:
    if case.operation.path == "/api/v1/admin/users/{username}" and case.method != "GET":
        # Changing or deleting the test's own admin would end its login.
        assume((case.path_parameters or {}).get("username") != ADMIN_USER)
    headers = None
    # A case made to go without valid credentials (a negative one whose Authorization header
    # is missing or malformed) is sent as generated: it must be refused.
    if not case.operation.schema.is_security_param_negated(case):
        token = admin_api.login() if case.operation.path == "/api/v1/auth/logout" else None
        headers = admin_api.headers(token)
    case.call_and_validate(base_url=admin_api.base, headers=headers, checks=CHECKS, timeout=30)


def test_admin_api_answers_on_real_resources(admin_api: AdminApi) -> None:
    """Each operation on a resource that exists (or, for the listings, with items in the
    page): the success responses the generated requests rarely reach, validated by the same
    checks. Destructive calls come last, each on its own resource."""
    api = admin_api
    doc = schemathesis.openapi.from_url(f"{api.base}/api/v1/openapi.json")
    key_header = {"Authorization": f"Bearer {api.api_key}"}
    calls: list[tuple[str, str, dict[str, Any], Any, int, dict[str, str] | None]] = [
        # (method, path template, path parameters, body, expected status, headers)
        ("GET", "/api/v1/clients", {}, None, 200, None),
        ("GET", "/api/v1/clients/{client_id}", {"client_id": DEVICE}, None, 200, None),
        ("GET", "/api/v1/clients/{client_id}", {"client_id": V311_CLIENT}, None, 200, None),
        ("GET", "/api/v1/sessions", {}, None, 200, None),
        ("GET", "/api/v1/sessions/{client_id}", {"client_id": DEVICE}, None, 200, None),
        ("GET", "/api/v1/sessions/{client_id}", {"client_id": OFFLINE_CLIENT}, None, 200, None),
        ("GET", "/api/v1/subscriptions", {}, None, 200, None),
        ("GET", "/api/v1/topics", {}, None, 200, None),
        ("GET", "/api/v1/retained", {}, None, 200, None),
        ("GET", "/api/v1/retained/{topic}", {"topic": TEXT_TOPIC}, None, 200, None),
        ("GET", "/api/v1/retained/{topic}", {"topic": BINARY_TOPIC}, None, 200, None),
        ("GET", "/api/v1/metrics", {}, None, 200, None),
        ("GET", "/healthz", {}, None, 200, None),
        ("GET", "/readyz", {}, None, 200, None),
        ("GET", "/api/v1/devices", {}, None, 200, None),
        ("GET", "/api/v1/devices/{client_id}", {"client_id": DEVICE}, None, 200, None),
        ("PATCH", "/api/v1/devices/{client_id}", {"client_id": DEVICE},
         {"labels": {"site": "field"}, "cert_identity": None}, 200, None),
        ("GET", "/api/v1/acl/rules", {}, None, 200, None),
        ("GET", "/api/v1/acl/rules/{id}", {"id": api.rule_id}, None, 200, None),
        ("PUT", "/api/v1/acl/rules/{id}", {"id": api.rule_id},
         {"permission": "allow", "action": "all", "topic": "sch/%u/#", "username": DEVICE_USER},
         200, None),
        ("POST", "/api/v1/acl/check", {},
         {"client_id": DEVICE, "username": DEVICE_USER, "action": "publish",
          "topic": f"sch/{DEVICE_USER}/x", "qos": 1}, 200, None),
        ("POST", "/api/v1/acl/check", {},
         {"client_id": "nobody", "action": "subscribe", "topic": "a/+/b"}, 200, None),
        ("GET", "/api/v1/admin/users", {}, None, 200, None),
        ("GET", "/api/v1/admin/users/{username}", {"username": ADMIN_USER}, None, 200, None),
        ("PATCH", "/api/v1/admin/users/{username}", {"username": OTHER_ADMIN},
         {"role": "operator"}, 200, None),
        ("GET", "/api/v1/admin/api-keys", {}, None, 200, None),
        ("GET", "/api/v1/auth/me", {}, None, 200, None),
        ("GET", "/api/v1/auth/me", {}, None, 200, key_header),
        ("GET", "/api/v1/clients", {}, None, 200, key_header),
        ("POST", "/api/v1/auth/logout", {}, None, 400, key_header),
        ("POST", "/api/v1/publish", {},
         {"topic": "sch/api", "payload_base64": "AAEC", "qos": 1, "retain": False,
          "content_type": "application/octet-stream", "expiry_interval": 60}, 200, None),
        ("POST", "/api/v1/publish", {}, {"topic": "$SYS/x", "payload": "no"}, 200, None),
        ("GET", "/api/v1/audit", {}, None, 200, None),
        # Destructive, each on its own resource.
        ("POST", "/api/v1/devices/{client_id}/rotate", {"client_id": DEVICE}, {}, 200, None),
        ("POST", "/api/v1/clients/{client_id}/kick", {"client_id": V311_CLIENT}, None, 204, None),
        ("DELETE", "/api/v1/sessions/{client_id}", {"client_id": OFFLINE_CLIENT}, None, 204, None),
        ("DELETE", "/api/v1/retained/{topic}", {"topic": TEXT_TOPIC}, None, 204, None),
        ("DELETE", "/api/v1/acl/rules/{id}", {"id": api.rule_id}, None, 204, None),
        ("DELETE", "/api/v1/devices/{client_id}", {"client_id": DEVICE}, None, 204, None),
        ("DELETE", "/api/v1/admin/api-keys/{id}", {"id": api.key_id}, None, 204, None),
        ("DELETE", "/api/v1/admin/users/{username}", {"username": OTHER_ADMIN}, None, 204, None),
        ("DELETE", "/api/v1/admin/users/{username}", {"username": ADMIN_USER}, None, 409, None),
    ]
    failures = []
    for method, path, params, body, expect, headers in calls:
        op = doc[path][method]
        kwargs: dict[str, Any] = {"path_parameters": params}
        if body is not None:
            kwargs["body"] = body
            kwargs["media_type"] = "application/json"
        case = op.Case(**kwargs)
        label = f"{method} {path} {params or ''}"
        try:
            r = case.call_and_validate(
                base_url=api.base,
                headers=headers or api.headers(),
                checks=CHECKS,
                timeout=30,
            )
        except (AssertionError, BaseExceptionGroup) as e:  # schemathesis: a FailureGroup
            failures.append(f"{label}:\n{e}")
            continue
        if r.status_code != expect:
            failures.append(f"{label}: expected {expect}, got {r.status_code}: {r.text}")
    assert not failures, "\n\n".join(failures)
