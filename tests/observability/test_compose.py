"""docker/: the Compose stack and the Dockerfile, checked without a Docker engine.

compose.yaml is validated against the Compose Specification's JSON schema (vendored as
compose-spec.json, see README.md here), and the files it mounts into Prometheus and Grafana are
followed from the container paths their configs use back to the repo files the other tests
validate. The tern service's TERN_* variables (and the Dockerfile's) are fed to the real
`tern config` when a binary is there: tern refuses unknown TERN_* names at start.

The "cluster" profile (three tern nodes, three NATS nodes, the cluster's database and its own
Prometheus) is checked the same way: each node's wiring, every NATS config with
`nats-server -c FILE -t` (Debian package `nats-server`, which scripts/test.sh installs), the
cluster Prometheus config with `promtool check config`.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
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
    PROMETHEUS_DIR,
    REPO,
    assert_ok,
    load_yaml,
    promtool,
    run,
)

SCHEMA = HERE / "compose-spec.json"
DEFAULT_SERVICES = {"tern", "postgres", "prometheus", "grafana"}
TERN_NODES = ("tern-1", "tern-2", "tern-3")
NATS_NODES = ("nats-1", "nats-2", "nats-3")
CLUSTER_SERVICES = {*TERN_NODES, *NATS_NODES, "postgres-cluster-init", "prometheus-cluster"}
NATS_DIR = DOCKER_DIR / "nats"
PROMETHEUS_CLUSTER_CONFIG = PROMETHEUS_DIR / "prometheus-cluster.yml"


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
    # Without a profile: the single-node stack, exactly. Everything else is "cluster".
    assert {n for n, s in services.items() if not s.get("profiles")} == DEFAULT_SERVICES
    assert {n for n, s in services.items() if s.get("profiles")} == CLUSTER_SERVICES
    for name in CLUSTER_SERVICES:
        assert services[name]["profiles"] == ["cluster"], name
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


def host_ports(compose) -> dict[str, str]:
    """Published host port -> service, across all services (short syntax)."""
    out: dict[str, str] = {}
    for name, svc in compose["services"].items():
        for p in svc.get("ports", []):
            parts = str(p).split(":")
            assert len(parts) in (2, 3), f"{name}: port {p} (use host:container or ip:host:container)"
            host = parts[-2]
            assert host not in out, f"host port {host} published by both {out[host]} and {name}"
            out[host] = name
    return out


def test_no_two_services_publish_the_same_host_port(compose):
    # With --profile cluster both stacks run side by side.
    ports = host_ports(compose)
    assert {ports[p] for p in ("1884", "1885", "1886")} == set(TERN_NODES)


# ------------------------------------------------------------------------- profile "cluster"


def env_of(compose, name: str) -> dict[str, str]:
    return {k: str(v) for k, v in compose["services"][name]["environment"].items()}


def cluster_database(compose) -> str:
    """The database postgres-cluster-init creates."""
    script = " ".join(compose["services"]["postgres-cluster-init"]["command"])
    (name,) = set(re.findall(r"CREATE DATABASE (\w+)", script))
    assert f"datname = '{name}'" in script, "the init must be idempotent (it runs on every up)"
    return name


def test_cluster_nodes_use_the_postgres_service_and_their_own_database(compose):
    pg = compose["services"]["postgres"]["environment"]
    db = cluster_database(compose)
    # Not the single node's database: the two stacks run side by side.
    assert db != pg["POSTGRES_DB"]
    init = compose["services"]["postgres-cluster-init"]
    assert init["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert (init["environment"]["PGHOST"], init["environment"]["PGUSER"], init["environment"]["PGPASSWORD"]) == (
        "postgres", pg["POSTGRES_USER"], pg["POSTGRES_PASSWORD"])
    for name in TERN_NODES:
        url = urlsplit(env_of(compose, name)["TERN_DATABASE__URL"])
        assert url.scheme == "postgres", f"{name}: cluster mode needs PostgreSQL"
        assert (url.hostname, url.port) == ("postgres", 5432), name
        assert (url.username, url.password, url.path.lstrip("/")) == (
            pg["POSTGRES_USER"], pg["POSTGRES_PASSWORD"], db), name
        deps = compose["services"][name]["depends_on"]
        assert deps["postgres-cluster-init"]["condition"] == "service_completed_successfully", name


def test_cluster_nodes_are_distinct_nodes_of_one_image(compose):
    tern = compose["services"]["tern"]
    ids = []
    for name in TERN_NODES:
        svc, env = compose["services"][name], env_of(compose, name)
        # The image the tern service builds; never pulled from a registry.
        assert svc["image"] == tern["image"] and "build" not in svc and svc["pull_policy"] == "never", name
        ids.append(env["TERN_CLUSTER__NODE_ID"])
        assert env["TERN_CLUSTER__NODE_ID"] == name
        assert env["TERN_MQTT_ADDR"] == "0.0.0.0:1883" and env["TERN_ADMIN__ADDR"] == "0.0.0.0:8080", name
        published = {str(p).rsplit(":", 1)[-1]: str(p) for p in svc["ports"]}
        assert set(published) == {"1883", "8080"}, name
        # The admin API has no TLS here: loopback only, as for the single node.
        assert published["8080"].startswith("127.0.0.1:"), name
        (volume,) = svc["volumes"]
        assert volume == f"{name}-data:/var/lib/tern"
    assert len(set(ids)) == len(ids) == 3, ids


def nats_config(path: Path) -> dict:
    """The few settings of a nats-server config the wiring depends on (these files use
    `key: value` lines and one-level blocks only)."""
    text = re.sub(r"#.*", "", path.read_text())

    def block(name: str) -> str:
        m = re.search(rf"^{name}\s*\{{(.*?)^\}}", text, re.M | re.S)
        assert m, f"{path}: no {name} {{ ... }} block"
        return m.group(1)

    def value(key: str, where: str) -> str:
        m = re.search(rf"^\s*{key}\s*[:=]\s*\"?([^\s\"]+)\"?\s*$", where, re.M)
        assert m, f"{path}: no {key}"
        return m.group(1)

    cluster, auth, js = block("cluster"), block("authorization"), block("jetstream")
    routes = re.search(r"routes\s*[:=]?\s*\[(.*?)\]", cluster, re.S)
    assert routes, f"{path}: no cluster routes"
    top = re.sub(r"^\w+\s*\{.*?^\}", "", text, flags=re.M | re.S)
    return {
        "server_name": value("server_name", top),
        "listen": value("listen", top),
        "http": value("http", top),
        "store_dir": value("store_dir", js),
        "user": value("user", auth),
        "password": value("password", auth),
        "cluster_name": value("name", cluster),
        "cluster_listen": value("listen", cluster),
        "routes": routes.group(1).split(),
    }


def need_nats_server() -> str:
    path = shutil.which("nats-server")
    if path is None:
        pytest.fail("nats-server not found: install Debian's 'nats-server' package "
                    "(apt-get install nats-server; scripts/test.sh does)")
    return path


def nats_mounted_config(compose, name: str) -> Path:
    svc = compose["services"][name]
    cmd = svc["command"]
    assert cmd[0] == "nats-server" and cmd[1] in ("-c", "--config"), cmd
    return host_path(svc, cmd[2])


@pytest.mark.parametrize("name", NATS_NODES)
def test_nats_config_is_valid(name, compose):
    path = nats_mounted_config(compose, name)
    assert path == (NATS_DIR / f"{name}.conf").resolve()
    assert_ok(run([need_nats_server(), "-c", str(path), "-t"]))


def test_nats_configs_form_one_cluster(compose):
    cfgs = {name: nats_config(nats_mounted_config(compose, name)) for name in NATS_NODES}
    assert sorted(p.name for p in NATS_DIR.iterdir()) == sorted(f"{n}.conf" for n in NATS_NODES)
    assert len({c["cluster_name"] for c in cfgs.values()}) == 1
    for name, c in cfgs.items():
        svc = compose["services"][name]
        assert svc["image"].startswith("nats:2.")
        assert c["server_name"] == name, "JetStream in a cluster needs a distinct server_name per node"
        cluster_port = c["cluster_listen"].rsplit(":", 1)[1]
        others = sorted(f"nats-route://{o}:{cfgs[o]['cluster_listen'].rsplit(':', 1)[1]}"
                        for o in NATS_NODES if o != name)
        assert sorted(c["routes"]) == others, f"{name}: routes to every other node"
        assert cluster_port == "6222"
        # JetStream's store on the node's own named volume.
        (data,) = [v for v in svc["volumes"] if not v.startswith(".")]
        volume, target = data.split(":")[:2]
        assert volume == f"{name}-data" and target == c["store_dir"], data
        # The health check asks the monitoring port the config opens.
        http_port = c["http"].rsplit(":", 1)[1]
        health = " ".join(svc["healthcheck"]["test"])
        assert f"127.0.0.1:{http_port}/healthz" in health, health
        # Monitoring published on loopback only; the client port not at all.
        for p in svc.get("ports", []):
            assert str(p).startswith("127.0.0.1:") and str(p).endswith(f":{http_port}"), p


def test_cluster_nodes_reach_every_nats_node_with_its_credentials(compose):
    cfgs = {name: nats_config(nats_mounted_config(compose, name)) for name in NATS_NODES}
    for name in TERN_NODES:
        env = env_of(compose, name)
        urls = [urlsplit(u.strip()) for u in env["TERN_CLUSTER__NATS_URL"].split(",")]
        assert all(u.scheme == "nats" for u in urls), env["TERN_CLUSTER__NATS_URL"]
        assert sorted(u.hostname for u in urls) == sorted(NATS_NODES), f"{name}: every NATS node"
        for u in urls:
            assert str(u.port) == cfgs[u.hostname]["listen"].rsplit(":", 1)[1], u.geturl()
            assert (env["TERN_CLUSTER__NATS_USER"], env["TERN_CLUSTER__NATS_PASSWORD"]) == (
                cfgs[u.hostname]["user"], cfgs[u.hostname]["password"]), name
        deps = compose["services"][name]["depends_on"]
        for n in NATS_NODES:
            assert deps[n]["condition"] == "service_healthy", name


def test_cluster_prometheus_runs_the_checked_config_and_rules(compose):
    svc = compose["services"]["prometheus-cluster"]
    assert svc["image"] == compose["services"]["prometheus"]["image"]
    flags = dict(a.split("=", 1) for a in svc["command"] if "=" in a)
    config_in_container = flags["--config.file"]
    assert host_path(svc, config_in_container) == PROMETHEUS_CLUSTER_CONFIG.resolve()
    assert_ok(promtool("check", "config", str(PROMETHEUS_CLUSTER_CONFIG)))
    cfg = load_yaml(PROMETHEUS_CLUSTER_CONFIG)
    rules = [host_path(svc, str(PurePosixPath(config_in_container).parent / f)) for f in cfg["rule_files"]]
    assert rules == [ALERTS.resolve()]
    # Its own data volume, not the single node Prometheus' one.
    assert "prometheus-cluster-data:/prometheus" in svc["volumes"]


def test_cluster_prometheus_scrapes_every_node_with_its_own_label(compose, catalogue):
    cfg = load_yaml(PROMETHEUS_CLUSTER_CONFIG)
    # TernDown watches up{job="tern"}: the job keeps that name.
    (job,) = [j for j in cfg["scrape_configs"] if j["job_name"] == "tern"]
    seen = {}
    for sc in job["static_configs"]:
        (target,) = sc["targets"]
        host, port = target.split(":")
        assert host in TERN_NODES, f"scrape target {target}: not a cluster node"
        assert sc["labels"] == {"tern_node": host}
        assert env_of(compose, host)["TERN_ADMIN__ADDR"] == f"0.0.0.0:{port}"
        seen[host] = target
    assert sorted(seen) == sorted(TERN_NODES)
    # A target label must not be a label of tern's own series, or Prometheus renames theirs
    # (exported_<name>): tern's cluster metrics have a `node` label.
    for sc in job["static_configs"]:
        for label in sc["labels"]:
            clash = sorted(f.name for f in catalogue.values() if label in f.labels)
            assert not clash, f"target label {label} is a label of {clash} (tests/observability/metrics.txt)"
    # The single-node config stays free of cluster targets (they would be down there).
    single = load_yaml(PROMETHEUS_CONFIG)
    targets = [t for j in single["scrape_configs"] for sc in j["static_configs"] for t in sc["targets"]]
    assert not any(t.split(":")[0] in CLUSTER_SERVICES for t in targets), targets


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


@pytest.mark.parametrize("where", ["Dockerfile", "compose", *TERN_NODES])
def test_tern_accepts_the_environment(where, compose):
    """tern stops at start on an unknown TERN_* variable: run `tern config` with the
    variables the image and the compose file set, and see them in the effective config."""
    binary = tern_bin()
    if binary is None:
        pytest.skip("no tern binary (build it, or set TERN_BIN): TERN_* names not checked")
    env = dockerfile_env()
    if where != "Dockerfile":
        service = "tern" if where == "compose" else where
        env.update({k: str(v) for k, v in compose["services"][service]["environment"].items()})
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
    if "TERN_CLUSTER__NODE_ID" in tern_env:
        cluster = printed.split("\n[cluster]\n", 1)[1].split("\n[", 1)[0]
        assert f'node_id = "{tern_env["TERN_CLUSTER__NODE_ID"]}"' in cluster, printed
        for host in NATS_NODES:
            assert f"nats://{host}:4222" in cluster, printed
