"""examples/: what can run here runs (the Flask and Django examples under gunicorn with the
example config, the sidecar command of the manifests, the waitress launcher, promtool on the
Prometheus configs); docker-compose.yml, the Dockerfile and the Kubernetes pod, which need
Docker or a cluster, are parsed and checked for consistency with each other and with the
real command-line parsers of wsgiwatch and gunicorn."""

from __future__ import annotations

import http.client
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from gunicorn.config import Config as GunicornConfig
from prometheus_client.parser import text_string_to_metric_families
from support.hol_scenario import wait_until
from support.servers import VENV_BIN, Server, free_port, run_server

from wsgiwatch.cli import build_parser
from wsgiwatch.cli.sidecar import settings_from
from wsgiwatch.errors import SpoolFormatError
from wsgiwatch.spool.reader import Record, SpoolReader, list_spools

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
PROMTOOL = "/usr/bin/promtool"
#: The image's working directory: commands in the manifests name paths relative to it.
IMAGE_WORKDIR = "/srv"


def load_yaml(name: str) -> Any:
    with open(EXAMPLES / name, encoding="utf-8") as f:
        return yaml.safe_load(f)


# -- running the examples ------------------------------------------------------------------


def get(port: int, path: str) -> tuple[int, int, bytes]:
    """(status, client port, body) of a GET on a fresh connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        conn.connect()
        assert conn.sock is not None
        local_port = int(conn.sock.getsockname()[1])
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, local_port, response.read()
    finally:
        conn.close()


def records_for(spool_dir: str, ports: set[int], timeout: float = 10.0) -> dict[int, Record]:
    """The records of the requests made from client ``ports``, from every worker's spool."""
    readers: dict[str, SpoolReader] = {}
    found: dict[int, Record] = {}
    deadline = time.monotonic() + timeout
    try:
        while set(found) != ports and time.monotonic() < deadline:
            for path in list_spools(spool_dir):
                if path not in readers:
                    try:
                        readers[path] = SpoolReader(path, track=False)
                    except SpoolFormatError:  # still being created: next round
                        continue
                for record in readers[path].read_records().records:
                    if record.peer_port in ports:
                        found[record.peer_port] = record
            time.sleep(0.01)
    finally:
        for reader in readers.values():
            reader.close()
    assert set(found) == ports, f"records for {sorted(ports - set(found))} never came"
    return found


def local_command(argv: list[str], port: int) -> list[str]:
    """A manifest's command run here: our venv's executables, 127.0.0.1 on ``port``, and
    paths relative to the image's working directory made relative to the repository."""
    out = list(argv)
    executable = os.path.join(VENV_BIN, out[0])
    if os.path.exists(executable):
        out[0] = executable
    for i, arg in enumerate(out[:-1]):
        if arg in ("--bind", "--listen"):
            out[i + 1] = f"127.0.0.1:{port}"
        elif arg in ("-c", "--config", "--chdir") and not os.path.isabs(out[i + 1]):
            out[i + 1] = str(REPO / out[i + 1])
    return out


def compose_service(name: str) -> dict[str, Any]:
    service: dict[str, Any] = load_yaml("docker-compose.yml")["services"][name]
    return service


def test_flask_example_with_its_sidecar(spool_dir: str) -> None:
    """The compose app and sidecar commands, run here: records carry the Flask URL rules,
    the accept hook of gunicorn.conf.py is on, and the sidecar's /metrics has the routes."""
    app_port, metrics_port = free_port(), free_port()
    app_argv = local_command(compose_service("app")["command"], app_port)
    sidecar_argv = local_command(compose_service("sidecar")["command"], metrics_port)
    assert sidecar_argv[1] == "sidecar"
    with (
        run_server(app_argv, app_port, spool_dir) as app,
        run_server(sidecar_argv, metrics_port, spool_dir) as sidecar,
    ):
        replies = {path: get(app.port, path) for path in ("/users/42", "/", "/healthz", "/x")}
        assert [status for status, _, _ in replies.values()] == [200, 200, 200, 404]
        records = records_for(spool_dir, {port for _, port, _ in replies.values()})
        routes = {path: records[port].route for path, (_, port, _) in replies.items()}
        assert routes == {
            "/users/42": "/users/<int:user_id>",
            "/": "/",
            "/healthz": "/healthz",
            "/x": "<unmatched>",
        }
        assert {r.accept_source for r in records.values()} == {"hook"}
        wait_until(lambda: len(list_spools(spool_dir)) == 2)  # workers = 2, hooked at start
        wait_for_metric_routes(sidecar, {"/users/<int:user_id>", "/", "/healthz", "<unmatched>"})
        status, _, _ = get(sidecar.port, "/healthz")
        assert status == 200


def wait_for_metric_routes(sidecar: Server, routes: set[str], timeout: float = 10.0) -> None:
    """Until the sidecar's ``wsgiwatch_requests_total`` has a series for each of ``routes``
    (it reads the workers' spools on its own schedule)."""
    deadline = time.monotonic() + timeout
    seen: set[str] = set()
    while time.monotonic() < deadline:
        _, _, body = get(sidecar.port, "/metrics")
        seen = {
            sample.labels["route"]
            for family in text_string_to_metric_families(body.decode())
            if family.name == "wsgiwatch_requests"
            for sample in family.samples
        }
        if routes <= seen:
            return
        time.sleep(0.1)
    raise AssertionError(f"routes {sorted(routes - seen)} not among the sidecar's {sorted(seen)}")


def django_example_command(port: int) -> list[str]:
    """The command in examples/django/exampleproject/wsgi.py's docstring."""
    doc = (EXAMPLES / "django/exampleproject/wsgi.py").read_text(encoding="utf-8")
    (line,) = [line.strip() for line in doc.splitlines() if line.strip().startswith("gunicorn")]
    return local_command([*shlex.split(line)[:1], "--bind", "x", *shlex.split(line)[1:]], port)


def test_django_example_under_gunicorn(spool_dir: str) -> None:
    port = free_port()
    with run_server(django_example_command(port), port, spool_dir) as server:
        replies = {path: get(server.port, path) for path in ("/users/42/", "/healthz", "/nope")}
        assert [status for status, _, _ in replies.values()] == [200, 200, 404]
        records = records_for(spool_dir, {port for _, port, _ in replies.values()})
    routes = {path: records[port].route for path, (_, port, _) in replies.items()}
    assert routes == {
        "/users/42/": "/users/<int:pk>/",
        "/healthz": "/healthz",
        "/nope": "<unmatched>",
    }
    assert {r.accept_source for r in records.values()} == {"hook"}


def test_django_example_passes_manage_py_check() -> None:
    done = subprocess.run(
        [sys.executable, "manage.py", "check", "--fail-level", "WARNING"],
        cwd=EXAMPLES / "django",
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_waitress_launcher(spool_dir: str) -> None:
    port = free_port()
    argv = [sys.executable, str(EXAMPLES / "waitress_serve.py"), "--listen", f"127.0.0.1:{port}"]
    with run_server([*argv, "--threads", "2"], port, spool_dir) as server:
        replies = [get(server.port, path) for path in ("/users/7", "/")]
        assert [(status, body) for status, _, body in replies] == [(200, b"ok\n")] * 2
        records = records_for(spool_dir, {port for _, port, _ in replies})
        (spool,) = list_spools(spool_dir)
        with SpoolReader(spool, track=False) as reader:
            header = reader.header()
    assert sorted(r.route for r in records.values()) == ["/", "/users/:id"]  # plain WSGI: folded
    assert {r.accept_source for r in records.values()} == {"hook"}
    assert header.accept_hook and header.declared_capacity == 2


# -- Prometheus configuration ------------------------------------------------------------


def promtool_check(path: Path) -> None:
    done = subprocess.run(
        [PROMTOOL, "check", "config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_prometheus_config_passes_promtool() -> None:
    # compose/prometheus.yml names its rules by their path in the container: checked below,
    # in test_compose_prometheus_loads_the_generated_rules.
    promtool_check(EXAMPLES / "prometheus.yml")


def test_kubernetes_scrape_config(tmp_path: Path) -> None:
    """Debian's promtool has no Kubernetes discovery: check the rest of the job with a
    static target in its place, and apply its address rewrite the way Prometheus would."""
    config = load_yaml("kubernetes/prometheus.yml")
    (job,) = config["scrape_configs"]
    assert job["kubernetes_sd_configs"] == [{"role": "pod"}]
    local = dict(job)
    del local["kubernetes_sd_configs"]
    local["static_configs"] = [{"targets": ["10.1.2.3:8000"]}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({**config, "scrape_configs": [local]}))
    promtool_check(tmp_path / "prometheus.yml")

    annotations = load_yaml("kubernetes/pod.yaml")["metadata"]["annotations"]
    labels = {
        "__address__": "10.1.2.3:8000",
        **{
            "__meta_kubernetes_pod_annotation_" + re.sub(r"[^a-zA-Z0-9_]", "_", key): value
            for key, value in annotations.items()
        },
    }
    for rule in job["relabel_configs"]:
        value = ";".join(labels.get(name, "") for name in rule["source_labels"])
        match = re.fullmatch(rule.get("regex", "(.*)"), value)  # Prometheus anchors regexes
        if rule.get("action", "replace") == "keep":
            assert match, rule
        elif match:
            replacement = rule.get("replacement", "$1")
            labels[rule["target_label"]] = re.sub(r"\$(\d+)", r"\\\1", replacement)
            labels[rule["target_label"]] = match.expand(labels[rule["target_label"]])
    assert labels["__address__"] == "10.1.2.3:9808"
    assert labels["__metrics_path__"] == "/metrics"


# -- docker-compose.yml and the Dockerfile -------------------------------------------------


def sidecar_settings(command: list[str], environment: dict[str, str]) -> tuple[str, int]:
    """(host, port) the sidecar listens on, as the real ``wsgiwatch`` parser reads it."""
    args = build_parser().parse_args(command[1:])
    assert command[0] == "wsgiwatch" and args.subcommand == "sidecar"
    settings = settings_from(args, environment)
    return settings.host, settings.port


def gunicorn_args(command: list[str]) -> Any:
    assert command[0] == "gunicorn"
    args = GunicornConfig().parser().parse_args(command[1:])
    # Paths are relative to the image's working directory, where examples/ is copied.
    assert (REPO / args.config).is_file()
    assert (REPO / args.chdir).is_dir()
    (app,) = args.args
    module = app.partition(":")[0]
    assert (REPO / args.chdir / (module.replace(".", "/") + ".py")).is_file()
    return args


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    return dict(env) if isinstance(env, dict) else dict(item.split("=", 1) for item in env)


def mounts_of(service: dict[str, Any]) -> dict[str, str]:
    """container path -> source (a named volume, or a host path relative to examples/)."""
    out = {}
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        out[target] = source
    return out


def test_compose_app_and_sidecar_share_spool_user_and_namespaces() -> None:
    compose = load_yaml("docker-compose.yml")
    services = compose["services"]
    assert set(services) == {"app", "sidecar", "prometheus", "grafana"}
    app, sidecar = services["app"], services["sidecar"]
    assert sidecar["network_mode"] == "service:app"
    assert sidecar["pid"] == "service:app"
    assert "ports" not in sidecar and "networks" not in sidecar  # it has the app's network
    assert app["user"] == sidecar["user"]
    assert app["image"] == sidecar["image"]

    spool_dir = env_of(app)["WSGIWATCH_DIR"]
    assert env_of(sidecar)["WSGIWATCH_DIR"] == spool_dir
    mounts = [mounts_of(app), mounts_of(sidecar)]
    spool_mounts = [
        (target, source)
        for target, source in mounts[0].items()
        if spool_dir.startswith(target.rstrip("/") + "/")
    ]
    (target, volume) = spool_mounts[0]
    assert len(spool_mounts) == 1 and mounts[1].get(target) == volume
    assert volume in compose["volumes"]  # a named volume, declared
    opts = compose["volumes"][volume]["driver_opts"]
    assert opts["type"] == "tmpfs"
    uid = app["user"].split(":")[0]
    assert f"uid={uid}" in opts["o"]

    gunicorn_args(app["command"])
    host, port = sidecar_settings(sidecar["command"], env_of(sidecar))
    assert host == "0.0.0.0"  # reachable from the Prometheus container
    assert f"127.0.0.1:{port}:{port}" in app["ports"]

    scrape = yaml.safe_load(
        (EXAMPLES / mounts_of(services["prometheus"])["/etc/prometheus/prometheus.yml"]).read_text()
    )
    (job,) = scrape["scrape_configs"]
    assert job["static_configs"] == [{"targets": [f"app:{port}"]}]


def test_compose_images_builds_and_mounts_are_real() -> None:
    services = load_yaml("docker-compose.yml")["services"]
    for name in ("app", "sidecar"):
        build = services[name]["build"]
        context = (EXAMPLES / build["context"]).resolve()
        assert context == REPO
        assert (context / build["dockerfile"]).resolve() == EXAMPLES / "Dockerfile"
    for name in ("prometheus", "grafana"):
        image, _, tag = services[name]["image"].rpartition(":")
        assert image and tag and tag != "latest", services[name]["image"]
    for name, service in services.items():
        for target, source in mounts_of(service).items():
            if source.startswith("."):
                assert (EXAMPLES / source).exists(), f"{name}: {source} -> {target}"


def host_path(service: dict[str, Any], container_path: str) -> Path:
    """Where a path inside a compose container comes from on the host (bind mounts)."""
    for target, source in sorted(mounts_of(service).items(), key=lambda m: -len(m[0])):
        if container_path == target or container_path.startswith(target.rstrip("/") + "/"):
            return (EXAMPLES / source / os.path.relpath(container_path, target)).resolve()
    raise AssertionError(f"{container_path} is not mounted from the host")


def test_compose_prometheus_loads_the_generated_rules(tmp_path: Path) -> None:
    """compose/prometheus.yml as the Prometheus container sees it: promtool checks it with
    the rule files the compose file mounts, which must exist."""
    prometheus = compose_service("prometheus")
    config = yaml.safe_load(host_path(prometheus, "/etc/prometheus/prometheus.yml").read_text())
    rule_files = []
    for pattern in config["rule_files"]:
        directory = host_path(prometheus, os.path.dirname(pattern))
        found = sorted(directory.glob(os.path.basename(pattern)))
        assert found, f"{pattern}: no rule files in {directory}"
        rule_files.extend(str(path) for path in found)
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({**config, "rule_files": rule_files}))
    promtool_check(tmp_path / "prometheus.yml")


def test_compose_grafana_provisioning_matches_the_mounts() -> None:
    """The generated provisioning files point where compose puts things: the data source at
    the Prometheus service, the dashboards provider at the mounted dashboards."""
    services = load_yaml("docker-compose.yml")["services"]
    grafana = services["grafana"]
    provisioning = host_path(grafana, "/etc/grafana/provisioning")
    urls = [
        source["url"]
        for path in sorted((provisioning / "datasources").glob("*.y*ml"))
        for source in yaml.safe_load(path.read_text())["datasources"]
    ]
    assert urls and all(url == "http://prometheus:9090" for url in urls), urls
    uids = {
        source["uid"]
        for path in sorted((provisioning / "datasources").glob("*.y*ml"))
        for source in yaml.safe_load(path.read_text())["datasources"]
    }
    alert_uids = {
        query["datasourceUid"]
        for path in sorted((provisioning / "alerting").glob("*.y*ml"))
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        for query in rule["data"]
    }
    assert alert_uids and alert_uids - {"__expr__"} <= uids, (alert_uids, uids)
    assert "prometheus" in services
    prometheus_port = 9090  # the prom/prometheus image's default listen port
    assert f"127.0.0.1:{prometheus_port}:{prometheus_port}" in services["prometheus"]["ports"]
    providers = [
        provider
        for path in sorted((provisioning / "dashboards").glob("*.y*ml"))
        for provider in yaml.safe_load(path.read_text())["providers"]
    ]
    assert providers
    for provider in providers:
        dashboards = host_path(grafana, provider["options"]["path"])
        assert dashboards.is_dir() and sorted(dashboards.glob("*.json")), dashboards


def test_dockerfile_copies_what_exists_and_runs_as_the_compose_user() -> None:
    lines = [
        line.strip()
        for line in (EXAMPLES / "Dockerfile").read_text().replace("\\\n", " ").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    workdir = ""
    for line in lines:
        instruction, _, rest = line.partition(" ")
        if instruction == "COPY":
            *sources, _dest = rest.split()
            for source in sources:
                assert (REPO / source).exists(), line
        elif instruction == "WORKDIR":
            workdir = rest
        elif instruction == "USER":
            assert rest == compose_service("app")["user"]
    assert workdir == IMAGE_WORKDIR
    assert "COPY examples ./examples" in lines
    assert f"ENV WSGIWATCH_DIR={env_of(compose_service('app'))['WSGIWATCH_DIR']}" in " ".join(
        lines
    ).replace("  ", " ")


# -- the Kubernetes pod ----------------------------------------------------------------------


def pod_containers() -> Iterator[dict[str, Any]]:
    yield from load_yaml("kubernetes/pod.yaml")["spec"]["containers"]


def test_kubernetes_pod() -> None:
    pod = load_yaml("kubernetes/pod.yaml")
    spec = pod["spec"]
    assert pod["kind"] == "Pod" and pod["apiVersion"] == "v1"
    assert spec["shareProcessNamespace"] is True
    uid = spec["securityContext"]["runAsUser"]
    assert uid == int(compose_service("app")["user"].split(":")[0])
    containers = {c["name"]: c for c in spec["containers"]}
    app, sidecar = containers["app"], containers["wsgiwatch-sidecar"]
    for container in (app, sidecar):  # nobody runs as another user
        assert container.get("securityContext", {}).get("runAsUser", uid) == uid
        assert container["image"] == compose_service("app")["image"]

    (volume,) = [v for v in spec["volumes"] if "emptyDir" in v]
    assert volume["emptyDir"]["medium"] == "Memory"
    spool_dirs = set()
    for container in (app, sidecar):
        env = {e["name"]: e["value"] for e in container["env"]}
        (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
        assert env["WSGIWATCH_DIR"].startswith(mount["mountPath"].rstrip("/") + "/")
        spool_dirs.add((env["WSGIWATCH_DIR"], mount["mountPath"]))
    assert len(spool_dirs) == 1  # same path, same directory, in both

    args = gunicorn_args(app["command"])
    (bind,) = args.bind
    app_port = int(bind.rpartition(":")[2])
    assert {p["name"]: p["containerPort"] for p in app["ports"]} == {"http": app_port}
    assert app["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}

    env = {e["name"]: e["value"] for e in sidecar["env"]}
    host, port = sidecar_settings(sidecar["command"], env)
    assert host == "0.0.0.0"
    assert {p["name"]: p["containerPort"] for p in sidecar["ports"]} == {"metrics": port}
    assert sidecar["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert "readinessProbe" not in sidecar  # a sidecar in trouble keeps the pod in service

    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(port)
    assert annotations["prometheus.io/path"] == "/metrics"
