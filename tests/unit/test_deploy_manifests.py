"""deploy/ checked offline: Kubernetes manifests, Prometheus config and rules, Grafana dashboard.

Kubernetes objects are validated against the JSON schemas that `kubernetes-validate`
ships, so no cluster and no network is needed.
"""

from __future__ import annotations

import ast
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from streams.settings import Settings
from web.auth import Authenticator

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
PROMETHEUS = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "matchstream-dashboard.json"

# The oldest Kubernetes minor the manifests are meant for, and the newest one the
# pinned validator knows.
K8S_VERSIONS = ("1.30", "1.37")

COUNTERS = {
    "matchstream_requests_total",
    "matchstream_matches_total",
    "matchstream_dlq_records_total",
    "matchstream_inputs_total",
    "matchstream_redelivered_total",
    "matchstream_sink_rows_written_total",
}
GAUGES = {
    "matchstream_waiting_requests",
    "matchstream_consumer_lag_messages",
    "matchstream_sink_lag_messages",
    "matchstream_live_streams",
}
POOL_HISTOGRAMS = {
    "matchstream_wait_seconds",
    "matchstream_match_latency_seconds",
    "matchstream_match_score",
}
HISTOGRAMS = POOL_HISTOGRAMS | {"matchstream_gc_pause_seconds"}
POOL_LABELLED = {
    "matchstream_requests_total",
    "matchstream_matches_total",
    "matchstream_waiting_requests",
    *POOL_HISTOGRAMS,
}
SERIES = (
    COUNTERS
    | GAUGES
    | {f"{name}{suffix}" for name in HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")}
)
_METRIC = re.compile(r"\bmatchstream_[a-z0-9_]+")
_RATE_OF = re.compile(r"\b(?:rate|irate|increase)\((matchstream_[a-z0-9_]+)")
_DERIV_OF = re.compile(r"\bderiv\((matchstream_[a-z0-9_]+)")
_DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")


def _manifests() -> list[Path]:
    return sorted(path for path in K8S.glob("*.yaml") if path.name != "kustomization.yaml")


def _objects() -> Iterator[dict[str, Any]]:
    for path in _manifests():
        yield from (doc for doc in yaml.safe_load_all(path.read_text()) if doc)


def _one(kind: str, name: str) -> dict[str, Any]:
    found = [o for o in _objects() if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected exactly one {kind}/{name}, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def statefulset() -> dict[str, Any]:
    return _one("StatefulSet", "matchstream-worker")


@pytest.fixture(scope="module")
def worker(statefulset: dict[str, Any]) -> dict[str, Any]:
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    return container


def _port_number(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p.get("name") == port]
    return int(number)


def _promql_exprs(dashboard: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return exprs


def _check_promql(expr: str) -> set[str]:
    """Metric names in `expr`, after checking they are the workers' and used sensibly."""
    for opening, closing in ("()", "{}", "[]"):
        assert expr.count(opening) == expr.count(closing), f"unbalanced {opening} in {expr}"
    names = set(_METRIC.findall(expr))
    assert names <= SERIES, f"unknown metrics {names - SERIES} in {expr}"
    for name in _RATE_OF.findall(expr):
        assert name in COUNTERS or name.endswith("_bucket"), f"rate of a non-counter in {expr}"
    for name in _DERIV_OF.findall(expr):
        assert name in GAUGES, f"deriv of a non-gauge in {expr}"
    return names


def _family(series: str) -> str:
    base = re.sub(r"_(bucket|sum|count)$", "", series)
    return base if base in HISTOGRAMS else series


# Kubernetes


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    assert "namespace" not in kustomization
    assert sorted(kustomization["resources"]) == [path.name for path in _manifests()]


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", _manifests(), ids=lambda path: path.name)
def test_manifest_matches_the_kubernetes_schema(path: Path, version: str) -> None:
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    assert docs
    for doc in docs:
        assert "namespace" not in doc["metadata"]
        # strict: an unknown (misspelt) field is an error, as the API server would make it.
        kubernetes_validate.validate(doc, version, strict=True)


def test_probes_hit_the_health_routes_on_the_web_port(worker: dict[str, Any]) -> None:
    web_port = Settings.model_fields["web_port"].default
    assert [p["containerPort"] for p in worker["ports"]] == [web_port]
    for probe, path in [
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/healthz"),
        ("startupProbe", "/healthz"),
    ]:
        get = worker[probe]["httpGet"]
        assert get["path"] == path
        assert _port_number(worker, get["port"]) == web_port


def test_every_variable_is_a_settings_field(worker: dict[str, Any]) -> None:
    config = _one("ConfigMap", "matchstream-config")
    secret = _one("Secret", "matchstream-secrets")
    sources = {
        ref.get("configMapRef", ref.get("secretRef", {})).get("name") for ref in worker["envFrom"]
    }
    assert sources == {"matchstream-config", "matchstream-secrets"}
    names = [*config["data"], *secret["stringData"], *(env["name"] for env in worker["env"])]
    helpers = {"POD_NAME", "POD_NAMESPACE"}  # downward API values for $(...) expansion only
    fields = {f"MATCHSTREAM_{field.upper()}" for field in Settings.model_fields}
    assert set(names) - helpers <= fields, sorted(set(names) - helpers - fields)
    assert set(secret["stringData"]) == {"MATCHSTREAM_JWT_SECRET", "MATCHSTREAM_DATABASE_URL"}
    assert len(names) == len(set(names)), "a variable defined twice is overridden silently"


def test_settings_accept_the_manifest_values(
    monkeypatch: pytest.MonkeyPatch, worker: dict[str, Any]
) -> None:
    config = _one("ConfigMap", "matchstream-config")["data"]
    secret = _one("Secret", "matchstream-secrets")["stringData"]
    pod = {"POD_NAME": "matchstream-worker-0", "POD_NAMESPACE": "prod"}
    literal = {
        env["name"]: re.sub(r"\$\((\w+)\)", lambda m: pod[m.group(1)], env["value"])
        for env in worker["env"]
        if "value" in env
    }
    for name in [n for n in os.environ if n.startswith("MATCHSTREAM_")]:
        monkeypatch.delenv(name)
    for name, value in {**config, **secret, **literal}.items():
        monkeypatch.setenv(name, value)

    settings = Settings()

    mounts = {m["name"]: m["mountPath"] for m in worker["volumeMounts"]}
    assert str(settings.data_dir) == mounts["data"]
    assert settings.web_port == worker["ports"][0]["containerPort"]
    assert settings.web_bind == "0.0.0.0"
    assert settings.web_host == "matchstream-worker-0.matchstream-worker.prod.svc.cluster.local"
    assert settings.replication_factor == 3
    assert settings.broker_hosts


def test_web_host_is_the_pods_stable_name(
    statefulset: dict[str, Any], worker: dict[str, Any]
) -> None:
    env = [e["name"] for e in worker["env"]]
    by_name = {e["name"]: e for e in worker["env"]}
    # $(VAR) expands only variables defined earlier in the list.
    assert env.index("POD_NAME") < env.index("MATCHSTREAM_WEB_HOST")
    assert env.index("POD_NAMESPACE") < env.index("MATCHSTREAM_WEB_HOST")
    assert by_name["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert by_name["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    headless = _one("Service", statefulset["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True
    assert by_name["MATCHSTREAM_WEB_HOST"]["value"] == (
        f"$(POD_NAME).{headless['metadata']['name']}.$(POD_NAMESPACE).svc.cluster.local"
    )


def test_services_and_budget_select_the_workers(
    statefulset: dict[str, Any], worker: dict[str, Any]
) -> None:
    labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert statefulset["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for name in ("matchstream-worker", "matchstream-api"):
        spec = _one("Service", name)["spec"]
        assert spec["selector"].items() <= labels.items()
        for port in spec["ports"]:
            assert _port_number(worker, port["targetPort"]) == worker["ports"][0]["containerPort"]
    budget = _one("PodDisruptionBudget", "matchstream-worker")["spec"]
    assert budget["maxUnavailable"] == 1
    assert budget["selector"]["matchLabels"].items() <= labels.items()


def test_statefulset_runs_workers_safely(
    statefulset: dict[str, Any], worker: dict[str, Any]
) -> None:
    spec = statefulset["spec"]
    pod = spec["template"]["spec"]
    assert spec["replicas"] == 3
    assert spec["podManagementPolicy"] == "Parallel"
    assert worker["command"] == ["matchstream", "worker"]
    assert worker["image"].startswith("ghcr.io/matchstream/matchstream:")
    # Faust needs time to commit, flush and close RocksDB; the default 30 s is tight.
    assert pod["terminationGracePeriodSeconds"] >= 60
    assert pod["enableServiceLinks"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert worker["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"requests", "limits"} <= worker["resources"].keys()
    # The memory target (README): 1,000,000 waiting requests in at most 2 GiB. A lower
    # limit kills a worker that holds that many in the middle of its recovery.
    assert _mebibytes(worker["resources"]["limits"]["memory"]) >= 2048
    assert _mebibytes(worker["resources"]["requests"]["memory"]) >= 2048
    (claim,) = spec["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in worker["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == "/var/lib/matchstream"
    annotations = spec["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    assert int(annotations["prometheus.io/port"]) == worker["ports"][0]["containerPort"]


def test_placeholder_jwt_secret_keeps_workers_from_starting() -> None:
    # Better a pod that refuses to start than one signed with a secret anyone can read here.
    placeholder = _one("Secret", "matchstream-secrets")["stringData"]["MATCHSTREAM_JWT_SECRET"]
    with pytest.raises(ValueError, match="MATCHSTREAM_JWT_SECRET"):
        Authenticator(secret=placeholder)


# Prometheus


def _relabel(rules: list[dict[str, Any]], labels: dict[str, str]) -> dict[str, str] | None:
    """Prometheus relabelling, for the actions the config uses; None when dropped."""
    labels = dict(labels)
    for rule in rules:
        action = rule.get("action", "replace")
        value = rule.get("separator", ";").join(labels.get(s, "") for s in rule["source_labels"])
        match = re.fullmatch(rule.get("regex", "(.*)"), value)  # Prometheus anchors regexes
        if action == "keep" and not match:
            return None
        if action == "drop" and match:
            return None
        if action == "replace" and match:
            replacement = re.sub(r"\$(\d+)", r"\\g<\1>", rule.get("replacement", "$1"))
            labels[rule["target_label"]] = match.expand(replacement)
        assert action in {"keep", "drop", "replace"}, action
    return labels


def _pod_target(statefulset: dict[str, Any], ip: str, **extra: str) -> dict[str, str]:
    """The labels Kubernetes service discovery gives a pod of the StatefulSet."""
    meta = statefulset["spec"]["template"]["metadata"]

    def clean(key: str) -> str:
        return re.sub(r"[^a-zA-Z0-9_]", "_", key)

    labels = {
        "__address__": f"{'[' + ip + ']' if ':' in ip else ip}:6066",
        "__metrics_path__": "/metrics",
        "__meta_kubernetes_namespace": "prod",
        "__meta_kubernetes_pod_name": "matchstream-worker-0",
        "__meta_kubernetes_pod_ip": ip,
        "__meta_kubernetes_pod_phase": "Running",
    }
    labels |= {
        f"__meta_kubernetes_pod_annotation_{clean(k)}": v for k, v in meta["annotations"].items()
    }
    labels |= {f"__meta_kubernetes_pod_label_{clean(k)}": v for k, v in meta["labels"].items()}
    return labels | extra


@pytest.fixture(scope="module")
def prometheus() -> dict[str, Any]:
    return yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())


def test_prometheus_scrapes_local_workers(prometheus: dict[str, Any]) -> None:
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    assert len(jobs) == len(prometheus["scrape_configs"])
    local = jobs["matchstream"]
    assert local["metrics_path"] == "/metrics"
    targets = [t for config in local["static_configs"] for t in config["targets"]]
    assert targets and all(t.endswith(":6066") for t in targets)
    for path in prometheus["rule_files"]:
        assert (PROMETHEUS / path).is_file()


@pytest.mark.parametrize(
    ("ip", "address"), [("10.1.2.3", "10.1.2.3:6066"), ("fd00::7", "[fd00::7]:6066")]
)
def test_prometheus_finds_annotated_pods(
    prometheus: dict[str, Any], statefulset: dict[str, Any], ip: str, address: str
) -> None:
    (job,) = [j for j in prometheus["scrape_configs"] if "kubernetes_sd_configs" in j]
    assert [sd["role"] for sd in job["kubernetes_sd_configs"]] == ["pod"]
    rules = job["relabel_configs"]

    target = _relabel(rules, _pod_target(statefulset, ip))

    assert target is not None
    assert target["__address__"] == address
    assert target["__metrics_path__"] == "/metrics"
    assert (target["namespace"], target["pod"]) == ("prod", "matchstream-worker-0")
    moved = _pod_target(statefulset, ip, __meta_kubernetes_pod_annotation_prometheus_io_port="9000")
    moved_target = _relabel(rules, moved)
    assert moved_target is not None
    assert moved_target["__address__"].endswith(":9000")
    opted_out = _pod_target(
        statefulset, ip, __meta_kubernetes_pod_annotation_prometheus_io_scrape="false"
    )
    assert _relabel(rules, opted_out) is None
    pending = _pod_target(statefulset, ip, __meta_kubernetes_pod_phase="Pending")
    assert _relabel(rules, pending) is None


def test_alert_rules_are_well_formed() -> None:
    groups = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert len({group["name"] for group in groups}) == len(groups)
    assert len({rule["alert"] for rule in rules}) == len(rules)
    used: set[str] = set()
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert re.fullmatch(r"[A-Z][A-Za-z0-9]+", rule["alert"])
        assert _DURATION.match(rule["for"])
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"]
        used |= _check_promql(rule["expr"])
    assert {"matchstream_consumer_lag_messages", "matchstream_dlq_records_total"} <= used
    assert "matchstream_sink_lag_messages" in used
    assert "matchstream_gc_pause_seconds_bucket" in used
    assert any(re.search(r"\bup\{", rule["expr"]) for rule in rules)


# Grafana


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def test_dashboard_uses_only_the_workers_metrics(dashboard: dict[str, Any]) -> None:
    used: set[str] = set()
    for expr in _promql_exprs(dashboard):
        names = _check_promql(expr)
        used |= names
        if {_family(name) for name in names} & POOL_LABELLED:
            assert 'pool=~"$pool"' in expr or "label_values" in expr, expr
    assert {_family(name) for name in used} == COUNTERS | GAUGES | HISTOGRAMS


def test_dashboard_variables_and_data_source(dashboard: dict[str, Any]) -> None:
    assert dashboard["schemaVersion"] == 39
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    assert variables["pool"]["definition"] == "label_values(matchstream_waiting_requests, pool)"
    assert variables["pool"]["includeAll"] and variables["pool"]["multi"]
    for panel in dashboard["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
        assert all(t["datasource"] == panel["datasource"] for t in panel["targets"])


def test_dashboard_layout(dashboard: dict[str, Any]) -> None:
    panels = dashboard["panels"]
    assert 1 <= len(panels) <= 16
    assert len({p["id"] for p in panels}) == len(panels)
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        pos = panel["gridPos"]
        assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24, panel["title"]
        area = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not cells & area, f"{panel['title']} overlaps another panel"
        cells |= area


def _defined_metrics() -> dict[str, str]:
    """Exposed metric name -> type, for every prometheus_client metric the source creates.

    Read from the syntax tree rather than by importing, so a worker module that does
    not import here (say, a missing optional dependency) cannot hide a renamed metric.
    """
    defined: dict[str, str] = {}
    for package in ("agents", "streams", "web"):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if not (isinstance(node, ast.Call) and node.args):
                    continue
                kind = getattr(node.func, "id", getattr(node.func, "attr", None))
                name = node.args[0]
                if kind not in {"Counter", "Gauge", "Histogram"} or not (
                    isinstance(name, ast.Constant)
                    and isinstance(name.value, str)
                    and name.value.startswith("matchstream_")
                ):
                    continue
                exposed = name.value
                # prometheus_client appends _total to a counter's samples if it is missing.
                if kind == "Counter" and not exposed.endswith("_total"):
                    exposed += "_total"
                defined[exposed] = kind
    return defined


def test_workers_define_every_metric_the_dashboard_and_alerts_use() -> None:
    defined = _defined_metrics()
    expected = (
        {name: "Counter" for name in COUNTERS}
        | {name: "Gauge" for name in GAUGES}
        | {name: "Histogram" for name in HISTOGRAMS}
    )
    assert {name: defined.get(name) for name in expected} == expected


def _mebibytes(quantity: str) -> float:
    """A Kubernetes memory quantity in binary units (Mi, Gi) as MiB."""
    units = {"Mi": 1, "Gi": 1024}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return float(quantity.removesuffix(suffix)) * factor
    raise AssertionError(f"unexpected memory quantity {quantity!r}")
