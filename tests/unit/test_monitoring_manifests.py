"""The operations manifests against what the server exports: every metric the alerts
(infra/k8s/components/monitoring) and the Grafana dashboard (infra/grafana/image-finetune.json) name
is one the server's registry holds (serving/metrics.py's ServingMetrics with
serving/operate_metrics.py's OperateMetrics, as the app builds it), each PromQL expression
lexes and balances, the alerts the operators rely on are there and watch the right series,
the monitors scrape the pods the serving manifests make, and the drift alert's route ends at
the alert receiver, with its token, on the path it serves."""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import urlparse

import jsonschema
import pytest
import typer.main
import yaml
from prometheus_client import CollectorRegistry

from image_finetune.pipelines import cli
from image_finetune.pipelines.alerts import ALERTS_PATH, HEALTH_PATH, RETRAIN_LABEL
from image_finetune.serving.metrics import ServingMetrics
from image_finetune.serving.operate_metrics import OperateMetrics
from tests.crds import validate_custom_resource

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "infra" / "k8s"
DASHBOARD = ROOT / "infra" / "grafana" / "image-finetune.json"
JOB = "image-finetune-serve"

SAMPLE_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
}
# What PromQL may call here; anything else is a typo or a function Prometheus lacks.
FUNCTIONS = {
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "rate",
    "irate",
    "increase",
    "changes",
    "histogram_quantile",
    "absent",
    "clamp_min",
    "topk",
    "bottomk",
}
KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}
LABEL_LISTS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
TOKEN = re.compile(
    r"""
    (?P<string>"(?:\\.|[^"\\])*")
  | (?P<range>\[\d+[smhdwy](?::\d+[smhdwy])?\])
  | (?P<number>\d+(?:\.\d+)?(?:e[+-]?\d+)?)
  | (?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<operator>==|!=|=~|!~|>=|<=|[-+*/%^<>=(){},])
  | (?P<space>\s+)
""",
    re.X,
)


def exported_metrics() -> set[str]:
    """Every sample name the server's registry can export, as the app builds it."""
    registry: CollectorRegistry = ServingMetrics().registry
    OperateMetrics(registry)
    return {
        family.name + suffix
        for family in registry.collect()
        for suffix in SAMPLE_SUFFIXES[family.type]
    }


def lex(expr: str) -> list[tuple[str, str]]:
    tokens, position = [], 0
    while position < len(expr):
        match = TOKEN.match(expr, position)
        if not match:
            raise ValueError(f"cannot read {expr[position : position + 20]!r} in {expr!r}")
        if match.lastgroup != "space":
            tokens.append((match.lastgroup, match.group()))
        position = match.end()
    return tokens


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads; raises ValueError where it does not lex,
    does not balance, or calls an unknown function."""
    tokens, names, stack, label_list = lex(expr), set(), [], False
    for index, (kind, text) in enumerate(tokens):
        following = tokens[index + 1][1] if index + 1 < len(tokens) else ""
        if kind == "operator" and text in "({":
            stack.append("label-list" if label_list else text)
            label_list = False
        elif kind == "operator" and text in ")}":
            opened = stack.pop() if stack else None
            if {"(": ")", "label-list": ")", "{": "}"}.get(opened) != text:
                raise ValueError(f"unbalanced {text!r} in {expr!r}")
        elif kind == "name" and not (stack and stack[-1] in ("{", "label-list")):
            if text in LABEL_LISTS:
                label_list = True
            elif following == "(" or following in LABEL_LISTS:  # sum by (le) (...)
                if text not in FUNCTIONS:
                    raise ValueError(f"unknown function {text}() in {expr!r}")
            elif text not in KEYWORDS:
                names.add(text)
    if stack:
        raise ValueError(f"unclosed {stack[-1]!r} in {expr!r}")
    return names


def selectors(expr: str, metric: str) -> list[str]:
    """The label matchers written after each use of ``metric``."""
    return re.findall(rf"\b{metric}\{{([^}}]*)\}}", expr)


# Where each manifest this test reads is in the kustomize tree.
SOURCES = {
    "monitoring.yaml": K8S / "components" / "monitoring" / "monitoring.yaml",
    "monitoring-alerts.yaml": K8S / "components" / "alerts" / "monitoring-alerts.yaml",
    "serving.yaml": K8S / "base" / "serving.yaml",
    "serving-kserve.yaml": K8S / "overlays" / "kserve" / "inferenceservice.yaml",
}


def documents(name: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(SOURCES[name].read_text()) if doc]


def one(name: str, kind: str) -> dict:
    [found] = [doc for doc in documents(name) if doc["kind"] == kind]
    return found


def rules() -> dict[str, dict]:
    spec = one("monitoring.yaml", "PrometheusRule")["spec"]
    return {rule["alert"]: rule for group in spec["groups"] for rule in group["rules"]}


def dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [
        (f"panel {panel['title']}", target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]
    queries += [(f"annotation {a['name']}", a["expr"]) for a in dashboard["annotations"]["list"]]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":  # label_values(<selector>, <label>): Grafana's
            selector = re.fullmatch(r"label_values\((.+), *\w+\)", variable["definition"])
            queries.append((f"variable {variable['name']}", selector[1]))
    return queries


@pytest.fixture(scope="module")
def exported() -> set[str]:
    return exported_metrics()


def test_the_exported_metrics_include_the_contracts(exported):
    assert {
        "http_requests_total",
        "http_request_duration_seconds_bucket",
        "served_model_version",
        "model_refresh_failures_total",
        "image_finetune_drift_detected",
        "image_finetune_drift_p_value",
        "image_finetune_monitor_windows_total",
        "image_finetune_monitor_images_total",
        "image_finetune_monitor_dropped_total",
        "image_finetune_feedback_total",
        "image_finetune_online_accuracy",
        "image_finetune_rollout_requests_total",
        "image_finetune_rollout_agreement",
    } <= exported


@pytest.mark.parametrize("alert", sorted(rules()))
def test_every_alert_reads_only_exported_metrics_of_the_servers_job(alert, exported):
    rule = rules()[alert]
    names = metric_names(rule["expr"])
    assert names and names <= exported, names - exported
    for name in names:
        for matchers in selectors(rule["expr"], name):
            assert f'job="{JOB}"' in matchers, f"{alert}: {name} outside the server's job"
    assert rule["labels"]["component"] == "image-finetune"
    assert rule["labels"]["severity"] in ("info", "warning", "critical")
    assert {"summary", "description"} <= set(rule["annotations"])


@pytest.mark.parametrize(
    "label,expr", dashboard_queries(), ids=[label for label, _ in dashboard_queries()]
)
def test_every_dashboard_query_reads_only_exported_metrics(label, expr, exported):
    names = metric_names(expr)
    assert names and names <= exported, names - exported


@pytest.mark.parametrize(
    "expr,problem",
    [
        ("sum(rate(http_requests_total[5m])", "unclosed"),
        ('sum(rate(http_requests_total{status=~"5.."[5m]))', "unbalanced"),
        ("histogram_quantil(0.99, x_bucket)", "unknown function"),
        ("served_model_version = = 0 ;", "cannot read"),
    ],
)
def test_a_broken_query_would_be_caught(expr, problem):
    with pytest.raises(ValueError, match=problem):
        metric_names(expr)


def test_a_misspelt_metric_would_be_caught(exported):
    assert (
        metric_names('sum by (le) (rate(http_request_total{job="x"}[5m]))')
        == {"http_request_total"}
        != metric_names("rate(http_requests_total[5m])")
    )
    assert "http_request_total" not in exported


def test_the_alerts_operators_rely_on_watch_the_right_series():
    found = rules()
    drift = found["ImageFinetuneDriftDetected"]["expr"]
    assert 'test="overall"' in selectors(drift, "image_finetune_drift_detected")[0]
    assert re.search(r"\)\s*==\s*1$", drift)
    errors = found["ImageFinetuneHighErrorRate"]["expr"]
    assert [
        bool(re.search(r'status=~"5\.\."', m)) for m in selectors(errors, "http_requests_total")
    ] == [True, False]  # 5xx over all requests
    latency = found["ImageFinetuneHighLatencyP99"]["expr"]
    assert latency.startswith("histogram_quantile(0.99,") and "by (namespace, le)" in latency
    assert "http_request_duration_seconds_bucket" in metric_names(latency)
    assert re.search(
        r"served_model_version\{[^}]*\}\)\s*==\s*0$", found["ImageFinetuneNoModelLoaded"]["expr"]
    )
    assert metric_names(found["ImageFinetuneModelRefreshFailing"]["expr"]) == {
        "model_refresh_failures_total"
    }


def test_only_the_drift_alert_starts_a_retraining():
    retraining = {
        name
        for name, rule in rules().items()
        if rule["labels"].get(RETRAIN_LABEL[0]) == RETRAIN_LABEL[1]
    }
    assert retraining == {"ImageFinetuneDriftDetected"}


def test_the_monitors_scrape_the_serving_pods_as_the_servers_job():
    service_monitor = one("monitoring.yaml", "ServiceMonitor")["spec"]
    service = one("serving.yaml", "Service")
    assert (
        service_monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    [endpoint] = service_monitor["endpoints"]
    assert endpoint["port"] in {port["name"] for port in service["spec"]["ports"]}
    pod_monitor = one("monitoring.yaml", "PodMonitor")["spec"]
    predictor = one("serving-kserve.yaml", "InferenceService")
    assert pod_monitor["selector"]["matchLabels"] == {
        "serving.kserve.io/inferenceservice": predictor["metadata"]["name"]
    }
    [pod_endpoint] = pod_monitor["podMetricsEndpoints"]
    [container] = predictor["spec"]["predictor"]["containers"]
    assert pod_endpoint["portNumber"] in {p["containerPort"] for p in container["ports"]}
    for scraped in (endpoint, pod_endpoint):
        assert scraped["path"] == "/metrics"
        assert {"action": "replace", "targetLabel": "job", "replacement": JOB} in scraped[
            "relabelings"
        ]


def test_the_retraining_route_ends_at_the_receiver_with_its_token():
    config = one("monitoring-alerts.yaml", "AlertmanagerConfig")["spec"]
    route = config["route"]
    assert {"name": RETRAIN_LABEL[0], "value": RETRAIN_LABEL[1], "matchType": "="} in route[
        "matchers"
    ]
    [receiver] = [r for r in config["receivers"] if r["name"] == route["receiver"]]
    [webhook] = receiver["webhookConfigs"]
    url = urlparse(webhook["url"])
    service = one("monitoring-alerts.yaml", "Service")
    assert url.hostname.split(".")[0] == service["metadata"]["name"]
    assert url.path == ALERTS_PATH and (url.port or 80) == service["spec"]["ports"][0]["port"]
    credentials = webhook["httpConfig"]["authorization"]["credentials"]
    deployment = one("monitoring-alerts.yaml", "Deployment")["spec"]["template"]["spec"]
    mounted = {v["name"]: v for v in deployment["volumes"]}["token"]["secret"]
    assert credentials["name"] == mounted["secretName"]
    assert credentials["key"] in {item["key"] for item in mounted["items"]}
    assert webhook["sendResolved"] is False  # a resolved alert starts nothing anyway


def test_the_receiver_runs_the_alert_receiver_command_with_its_options():
    deployment = one("monitoring-alerts.yaml", "Deployment")["spec"]["template"]["spec"]
    [container] = deployment["containers"]
    assert container["command"] == ["image-finetune-pipeline", "alert-receiver"]
    command = typer.main.get_command(cli.app).commands["alert-receiver"]
    options = {opt for param in command.params for opt in param.opts}
    flags = [arg for arg in container["args"] if arg.startswith("--")]
    assert set(flags) <= options, set(flags) - options
    assert container["readinessProbe"]["httpGet"]["path"] == HEALTH_PATH
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    args = container["args"]
    for flag in ("--pipeline-package", "--token-file"):
        assert str(Path(args[args.index(flag) + 1]).parent) in mounts, flag
    kfp_token = {v["name"]: v for v in deployment["volumes"]}["kfp-token"]["projected"]
    assert kfp_token["sources"][0]["serviceAccountToken"]["audience"] == ("pipelines.kubeflow.org")
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'image-finetune-pipeline = "image_finetune.pipelines.cli:app"' in pyproject


@pytest.mark.parametrize(
    "file,kind,breakage",
    [
        (
            "monitoring.yaml",
            "ServiceMonitor",
            lambda spec: spec["endpoints"][0].update(metricsPath="/metrics"),
        ),
        (
            "monitoring.yaml",
            "PodMonitor",
            lambda spec: spec["podMetricsEndpoints"][0].update(portNumber="8080"),
        ),
        (
            "monitoring.yaml",
            "PrometheusRule",
            lambda spec: spec["groups"][0]["rules"][0].update(expression="up"),
        ),
        (
            "monitoring-alerts.yaml",
            "AlertmanagerConfig",
            lambda spec: spec["receivers"][0].update(slackConfigs=[{"channel": "#ml"}]),
        ),
    ],
    ids=[
        "unknown-endpoint-field",
        "port-number-as-text",
        "unknown-rule-field",
        "receiver-kind-not-vendored",
    ],
)
def test_a_broken_monitoring_object_fails_validation(file, kind, breakage):
    manifest = one(file, kind)
    validate_custom_resource(manifest)
    breakage(manifest["spec"])
    with pytest.raises(jsonschema.ValidationError):
        validate_custom_resource(manifest)


def test_the_dashboard_is_a_grafana_dashboard_on_a_chosen_prometheus():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    panels = dashboard["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert 'namespace="$namespace"' in target["expr"], panel["title"]
            assert f'job="{JOB}"' in target["expr"], panel["title"]
        box = panel["gridPos"]
        assert box["x"] + box["w"] <= 24, panel["title"]
