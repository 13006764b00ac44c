"""docker/: the Compose stack and the Dockerfile, checked without a Docker engine.

compose.yaml is validated against the Compose Specification's JSON schema (vendored as
compose-spec.json, see README.md here), and the files it mounts into Prometheus and Grafana are
followed from the container paths their configs use back to the repo files the other tests
validate. The tern service's TERN_* variables (and the Dockerfile's) are fed to the real
`tern config` when a binary is there: tern refuses unknown TERN_* names at start.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import jsonschema_rs
import pytest

from conftest import (
    ALERTS,
    COMPOSE,
    DASHBOARD,
    DOCKER_DIR,
    DOCKERFILE,
    GRAFANA_DIR,
    HERE,
    PROMETHEUS_CONFIG,
    REPO,
    load_yaml,
)

SCHEMA = HERE / "compose-spec.json"


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_yaml(COMPOSE)


def test_compose_matches_the_compose_specification(compose):
    validator = jsonschema_rs.validator_for(json.loads(SCHEMA.read_text()))
    errors = [f"{'/'.join(map(str, e.instance_path)) or '(root)'}: {e.message}"
              for e in validator.iter_errors(compose)]
    assert not errors, "\n".join(errors)


def test_schema_check_rejects_a_broken_file(compose):
    """The vendored schema really is strict: a misspelt key fails."""
    validator = jsonschema_rs.validator_for(json.loads(SCHEMA.read_text()))
    broken = json.loads(json.dumps(compose))
    broken["services"]["tern"]["dependson"] = broken["services"]["tern"].pop("depends_on")
    assert not validator.is_valid(broken)


def test_services_and_volumes(compose):
    services = compose["services"]
    assert set(services) == {"tern", "postgres", "prometheus", "grafana"}
    for svc in services.values():
        for v in svc.get("volumes", []):
            src = v.split(":", 1)[0] if isinstance(v, str) else v.get("source", "")
            if src and not src.startswith((".", "/")):
                assert src in compose.get("volumes", {}), f"named volume {src} not declared"


# ------------------------------------------------------------------------------- mounts


def mounts(service: dict) -> list[tuple[Path, PurePosixPath]]:
    """Bind mounts of a service: (host path, container path)."""
    out = []
    for v in service.get("volumes", []):
        if isinstance(v, str):
            parts = v.split(":")
            src, dst = parts[0], parts[1]
        else:
            if v.get("type", "volume") != "bind":
                continue
            src, dst = v["source"], v["target"]
        if src.startswith((".", "/")):
            out.append(((COMPOSE.parent / src).resolve(), PurePosixPath(dst)))
    return out


def host_path(service: dict, container_path: str) -> Path:
    """The repo file a container path of a service is, through its bind mounts."""
    p = PurePosixPath(container_path)
    best = None
    for src, dst in mounts(service):
        if p == dst or dst in p.parents:
            if best is None or len(dst.parts) > len(best[1].parts):
                best = (src, dst)
    assert best is not None, f"{container_path} is not bind-mounted"
    src, dst = best
    return (src / p.relative_to(dst)).resolve()


def test_prometheus_runs_the_checked_config_and_rules(compose):
    svc = compose["services"]["prometheus"]
    flags = dict(a.split("=", 1) for a in svc["command"] if "=" in a)
    config_in_container = flags["--config.file"]
    assert host_path(svc, config_in_container) == PROMETHEUS_CONFIG.resolve()
    # rule_files, relative to the config file's directory in the container.
    cfg = load_yaml(PROMETHEUS_CONFIG)
    rules = [host_path(svc, str(PurePosixPath(config_in_container).parent / f)) for f in cfg["rule_files"]]
    assert rules == [ALERTS.resolve()]


def test_prometheus_scrapes_the_tern_service(compose):
    cfg = load_yaml(PROMETHEUS_CONFIG)
    (job,) = [j for j in cfg["scrape_configs"] if j["job_name"] == "tern"]
    (target,) = [t for sc in job["static_configs"] for t in sc["targets"]]
    host, port = target.split(":")
    assert host in compose["services"], f"scrape target {target}: no service {host}"
    admin_addr = compose["services"][host]["environment"]["TERN_ADMIN__ADDR"]
    assert admin_addr.endswith(f":{port}") and admin_addr.startswith("0.0.0.0:"), admin_addr


def test_grafana_gets_the_checked_provisioning_and_dashboard(compose):
    svc = compose["services"]["grafana"]
    prov = host_path(svc, "/etc/grafana/provisioning")
    assert prov == (GRAFANA_DIR / "provisioning").resolve()
    # Exactly the provisioning files test_grafana.py checks, nothing else.
    files = sorted(str(p.relative_to(prov)) for p in prov.rglob("*") if p.is_file())
    assert files == ["dashboards/tern.yml", "datasources/prometheus.yml"]
    # The dashboard provider's path leads to the checked dashboard.
    provider = load_yaml(prov / "dashboards" / "tern.yml")["providers"][0]
    dash_dir = host_path(svc, provider["options"]["path"])
    assert sorted(dash_dir.glob("*.json")) == [DASHBOARD.resolve()]
    home = svc["environment"].get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home:
        assert host_path(svc, home) == DASHBOARD.resolve()


def test_grafana_datasource_reaches_the_prometheus_service(compose):
    ds = load_yaml(GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml")["datasources"][0]
    url = urlsplit(ds["url"])
    assert url.hostname in compose["services"]
    assert url.port == 9090  # Prometheus' default listen port (no --web.listen-address)
    assert not any(a.startswith("--web.listen-address") for a in compose["services"]["prometheus"]["command"])


def test_tern_uses_the_postgres_service(compose):
    tern, pg = compose["services"]["tern"], compose["services"]["postgres"]
    url = urlsplit(tern["environment"]["TERN_DATABASE__URL"])
    assert url.scheme == "postgres" and url.hostname == "postgres" and url.port == 5432
    env = pg["environment"]
    assert (url.username, url.password, url.path.lstrip("/")) == (
        env["POSTGRES_USER"], env["POSTGRES_PASSWORD"], env["POSTGRES_DB"])
    assert tern["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])


def test_tern_is_built_from_the_dockerfile(compose):
    build = compose["services"]["tern"]["build"]
    context = (COMPOSE.parent / build["context"]).resolve()
    assert context == REPO.resolve()
    assert (context / build["dockerfile"]).resolve() == DOCKERFILE.resolve()
    # BuildKit reads <Dockerfile>.dockerignore beside the Dockerfile.
    ignore = (DOCKER_DIR / "Dockerfile.dockerignore").read_text().split()
    for must in ("target", ".venv", ".git"):
        assert must in ignore


def test_published_ports(compose):
    def published(svc):
        return {str(p).rsplit(":", 1)[-1]: str(p) for p in compose["services"][svc].get("ports", [])}

    assert "1883" in published("tern") and "8080" in published("tern")
    assert "9090" in published("prometheus")
    assert "3000" in published("grafana")


# ----------------------------------------------------------------------------- Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_shape():
    ins = dockerfile_instructions()
    froms = [rest for word, rest in ins if word == "FROM"]
    assert len(froms) == 3, froms
    # The web UI is built first and copied into the Rust build, which embeds it.
    assert froms[0].startswith("node:") and froms[0].endswith(" AS ui")
    assert froms[1].startswith("rust:") and "bookworm" in froms[1]
    assert froms[2] == "debian:bookworm-slim"
    runs = " ".join(rest for word, rest in ins if word == "RUN")
    assert "npm ci" in runs and "npm run build" in runs
    assert ("COPY", "--from=ui /src/web-admin/dist web-admin/dist") in ins
    assert runs.index("npm run build") < runs.index("cargo build --release -p tern-server --locked")
    final = ins[[i for i, (w, _) in enumerate(ins) if w == "FROM"][-1]:]
    get = lambda w: [rest for word, rest in final if word == w]  # noqa: E731
    user = get("USER")
    assert user and not user[-1].startswith(("root", "0")), "the runtime must not run as root"
    assert get("WORKDIR") == ["/var/lib/tern"]
    assert set(" ".join(get("EXPOSE")).split()) == {"1883", "8080"}
    (health,) = get("HEALTHCHECK")
    assert "http://127.0.0.1:8080/healthz" in health
    if "curl" in health:
        assert "curl" in " ".join(r for w, r in final if w == "RUN"), "HEALTHCHECK uses curl: install it"
    assert json.loads(get("ENTRYPOINT")[-1]) == ["tern"]
    assert json.loads(get("CMD")[-1]) == ["serve"]


def dockerfile_env() -> dict[str, str]:
    env = {}
    for word, rest in dockerfile_instructions():
        if word == "ENV":
            for item in shlex.split(rest):
                k, _, v = item.partition("=")
                env[k] = v
    return env


def tern_bin() -> Path | None:
    candidate = os.environ.get("TERN_BIN") or str(REPO / "target" / "debug" / "tern")
    return Path(candidate) if Path(candidate).is_file() else None


@pytest.mark.parametrize("where", ["Dockerfile", "compose"])
def test_tern_accepts_the_environment(where, compose):
    """tern stops at start on an unknown TERN_* variable: run `tern config` with the
    variables the image and the compose file set, and see them in the effective config."""
    binary = tern_bin()
    if binary is None:
        pytest.skip("no tern binary (build it, or set TERN_BIN): TERN_* names not checked")
    env = dockerfile_env()
    if where == "compose":
        env.update({k: str(v) for k, v in compose["services"]["tern"]["environment"].items()})
    tern_env = {k: v for k, v in env.items() if k.startswith("TERN_")}
    assert tern_env
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TERN_")}
    proc = subprocess.run([str(binary), "config"], env={**clean, **tern_env},
                          capture_output=True, text=True, timeout=30, cwd=HERE)
    assert proc.returncode == 0, proc.stderr
    printed = proc.stdout
    assert re.search(r'^mqtt_addr = "0\.0\.0\.0:1883"$', printed, re.M), printed
    admin = printed.split("\n[admin]\n", 1)[1]
    assert re.search(r'^addr = "0\.0\.0\.0:8080"$', admin, re.M)
    if "TERN_DATABASE__URL" in tern_env:
        database = printed.split("\n[database]\n", 1)[1]
        assert f'url = "{tern_env["TERN_DATABASE__URL"]}"' in database
