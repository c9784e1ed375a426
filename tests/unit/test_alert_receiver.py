"""The alert receiver end to end but for the cluster: Alertmanager's webhook payload (its real
shape, version 4) posted over HTTP to the receiver's server, which submits the compiled
pipeline with the real ``kfp.Client`` to a stand-in Kubeflow Pipelines API (tests/kfp_api.py).
One run per firing retraining alert, however often and from however many Alertmanagers it
comes; at most one per interval; nothing for resolved or other alerts; bad requests refused
and nothing started; a refusal by KFP answered 502 so that Alertmanager's retry can start it."""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from image_finetune.config import load_params
from image_finetune.pipelines import cli
from image_finetune.pipelines.alerts import (
    REMEMBERED_ALERTS,
    Alert,
    AlertReceiver,
    StartedAlerts,
    TriggerPolicy,
    make_server,
)
from image_finetune.pipelines.deployment import Deployment
from image_finetune.pipelines.monitoring import compile_monitoring_pipeline
from image_finetune.pipelines.pipeline import compile_pipeline
from image_finetune.pipelines.runs import connect, kfp_errors, submit_package
from tests.kfp_api import fake_kfp

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "alertmanager-shared-secret-0123456789"
NAMESPACE = "team-ml"
EXPERIMENT = "image-finetune-monitoring"


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    """The compiled monitoring pipeline the receiver starts."""
    path = tmp_path_factory.mktemp("package") / "monitoring.yaml"
    compile_monitoring_pipeline(
        load_params(ROOT / "params.yaml", use_env=False),
        str(path),
        Deployment(image="registry.example.com/ml/image-finetune:1.2.3"),
        source_uri="s3://ml/windows/latest.npz",
    )
    return path


def notification(*alerts: dict, status: str = "firing") -> dict:
    """An Alertmanager webhook notification, as Alertmanager 0.27 sends it for the route of
    infra/k8s/components/alerts/monitoring-alerts.yaml's AlertmanagerConfig."""
    return {
        "version": "4",
        "groupKey": '{}/{namespace="team-ml"}/{retrain="true"}:'
        '{alertname="ImageFinetuneDriftDetected", model_version="7"}',
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "team-ml/image-finetune-retrain/retrain",
        "groupLabels": {"alertname": "ImageFinetuneDriftDetected"},
        "commonLabels": {"component": "image-finetune"},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager.monitoring:9093",
        "alerts": list(alerts),
    }


def alert(
    fingerprint: str = "5c1d2c8a9e0f1b2c",
    status: str = "firing",
    starts_at: str = "2026-12-07T03:10:00.000Z",
    **labels: str,
) -> dict:
    return {
        "status": status,
        "fingerprint": fingerprint,
        "startsAt": starts_at,
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus.monitoring:9090/graph?g0.expr=...",
        "annotations": {"summary": "drift"},
        "labels": {
            "alertname": "ImageFinetuneDriftDetected",
            "severity": "warning",
            "component": "image-finetune",
            "namespace": NAMESPACE,
            "model_version": "7",
            "retrain": "true",
            **labels,
        },
    }


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def receiver(package, monkeypatch):
    """The receiver's HTTP server on a free port, submitting to a stand-in KFP: yields a
    function that posts (body, token) and returns (status, reply), the stand-in's state and
    the policy's clock."""
    monkeypatch.setenv("KFP_TOKEN", "kfp-token")
    clock = Clock()
    with fake_kfp() as (url, state):

        def submit(run_name: str) -> str:
            with kfp_errors(url):
                return submit_package(
                    connect(url, NAMESPACE), package, EXPERIMENT, NAMESPACE, run_name
                )

        server = make_server(
            AlertReceiver(TOKEN, TriggerPolicy(3600, clock), submit), "127.0.0.1", 0
        )
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()

        def post(
            body,
            token: str | None = TOKEN,
            method: str = "POST",
            path: str = "/alerts",
            headers: dict | None = None,
        ):
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            connection = http.client.HTTPConnection(
                "127.0.0.1", server.server_address[1], timeout=30
            )
            sent = {"Content-Type": "application/json", **(headers or {})}
            if token is not None:
                sent["Authorization"] = f"Bearer {token}"
            connection.request(method, path, body=data, headers=sent)
            response = connection.getresponse()
            reply = json.loads(response.read())
            connection.close()
            return response.status, reply

        yield post, state, clock
        server.shutdown()
        server.server_close()


def test_a_firing_retraining_alert_starts_one_run_of_the_package(receiver, package):
    post, state, _ = receiver
    status, reply = post(notification(alert()))
    assert (status, reply["started"], reply["alert"]) == (
        200,
        "run-1",
        "ImageFinetuneDriftDetected",
    )
    [run] = state.posted("runs")
    assert run.headers["authorization"] == "Bearer kfp-token"
    assert run.body["display_name"] == "monitoring-ImageFinetuneDriftDetected-5c1d2c8a9e0f1b2c"
    assert run.body["experiment_id"] == state.experiments[EXPERIMENT]["experiment_id"]
    compiled = next(yaml.safe_load_all(package.read_text()))
    sent = run.body["pipeline_spec"]["pipeline_spec"]
    assert (
        sent["pipelineInfo"]
        == compiled["pipelineInfo"]
        == {
            "name": "image-finetune-monitoring",
            "displayName": "Image classifier monitoring and retraining",
            "description": compiled["pipelineInfo"]["description"],
        }
    )
    # The run's arguments are the compiled defaults: the images it was compiled to test.
    assert sent["root"]["inputDefinitions"]["parameters"]["source_uri"]["defaultValue"] == (
        "s3://ml/windows/latest.npz"
    )
    assert run.body["runtime_config"]["parameters"] == {}


def test_the_same_alert_again_or_from_a_second_alertmanager_starts_nothing(receiver):
    post, state, clock = receiver
    replies = []

    def send():
        replies.append(post(notification(alert())))

    threads = [threading.Thread(target=send) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(reply["reason"] for _, reply in replies) == [
        "already started for this alert"
    ] * 5 + ["started"]
    clock.now += 10 * 3600  # Alertmanager's repeat_interval later, still firing
    assert post(notification(alert()))[1]["reason"] == "already started for this alert"
    assert len(state.posted("runs")) == 1


def test_a_new_alert_within_the_interval_waits_and_starts_after_it(receiver):
    post, state, clock = receiver
    assert post(notification(alert()))[1]["started"] == "run-1"
    later = notification(alert(fingerprint="77aa", starts_at="2026-12-07T03:40:00Z"))
    status, reply = post(later)
    assert status == 200 and reply["started"] is None
    assert reply["reason"].startswith("rate limited")
    clock.now += 3600
    assert post(later)[1]["started"] == "run-2"
    # The same alert resolved, then firing again, is a new firing: a new startsAt.
    clock.now += 3600
    assert post(notification(alert(starts_at="2026-12-07T09:00:00Z")))[1]["started"] == "run-3"


@pytest.mark.parametrize(
    "body,reason",
    [
        (notification(alert(status="resolved"), status="resolved"), "resolved"),
        (notification(alert(retrain="false")), "no firing retraining alert"),
        (
            notification(alert(alertname="ImageFinetuneHighErrorRate", retrain="")),
            "no firing retraining alert",
        ),
        (notification(), "resolved"),
    ],
    ids=["resolved", "retrain-false", "other-alert", "no-alerts"],
)
def test_resolved_and_other_alerts_start_nothing(receiver, body, reason):
    post, state, _ = receiver
    assert post(body) == (200, {"started": None, "reason": reason})
    assert state.posted("runs") == []


@pytest.mark.parametrize(
    "kwargs,status",
    [
        ({"token": None}, 401),
        ({"token": "wrong-token-wrong-token-wrong"}, 401),
        ({"token": TOKEN[:-1]}, 401),
        ({"body": b"{not json"}, 400),
        ({"body": b"\xff\xfe"}, 400),
        ({"body": {"version": "3", "alerts": []}}, 400),
        ({"body": {**notification(), "alerts": "all"}}, 400),
        ({"body": notification({**alert(), "labels": {"alertname": 5}})}, 400),
        ({"body": notification({**alert(), "status": "pending"})}, 400),
        ({"body": notification({**alert(), "fingerprint": "f" * 5000})}, 400),
        ({"headers": {"Content-Length": str(10**9)}, "body": b""}, 413),
        ({"path": "/"}, 404),
        ({"method": "GET"}, 404),
        ({"method": "PUT"}, 405),
    ],
    ids=[
        "no-token",
        "wrong-token",
        "token-prefix",
        "not-json",
        "not-utf8",
        "other-version",
        "alerts-not-a-list",
        "label-not-a-string",
        "unknown-status",
        "huge-fingerprint",
        "huge-body",
        "wrong-path",
        "get",
        "put",
    ],
)
def test_bad_requests_are_refused_and_start_nothing(receiver, kwargs, status):
    post, state, _ = receiver
    body = kwargs.pop("body", notification(alert()))
    code, reply = post(body, **kwargs)
    assert code == status and reply["error"]
    assert state.posted("runs") == []


def test_a_refusal_by_kfp_is_a_502_and_alertmanagers_retry_starts_the_run(receiver):
    post, state, _ = receiver
    state.fail_runs = 403
    status, reply = post(notification(alert()))
    assert status == 502 and "403" in reply["error"] and "kfp-token" not in reply["error"]
    state.fail_runs = None
    assert post(notification(alert()))[1]["started"] == "run-2"  # the refused one counted


def test_the_health_probe_needs_no_token(receiver):
    post, _, _ = receiver
    assert post(b"", token=None, method="GET", path="/healthz") == (200, {"status": "ok"})


def test_idle_connections_cannot_take_every_thread():
    server = make_server(
        AlertReceiver(TOKEN, TriggerPolicy(0), lambda name: "run"),
        "127.0.0.1",
        0,
        max_connections=1,
    )
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    address = ("127.0.0.1", server.server_address[1])
    idle = socket.create_connection(address)  # holds the only slot, says nothing
    try:
        time.sleep(0.2)
        second = http.client.HTTPConnection(*address, timeout=10)
        with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
            second.request("GET", "/healthz")
            second.getresponse()
    finally:
        idle.close()
    for _ in range(50):  # the slot comes back once the idle client is gone
        time.sleep(0.05)
        try:
            third = http.client.HTTPConnection(*address, timeout=10)
            third.request("GET", "/healthz")
            if third.getresponse().status == 200:
                break
        except (http.client.RemoteDisconnected, ConnectionError):
            continue
    else:
        pytest.fail("the receiver never answered again")
    server.shutdown()
    server.server_close()


def test_the_policy_remembers_a_bounded_number_of_alerts():
    policy = TriggerPolicy(0, Clock())
    alerts = [
        Alert("a", "firing", f"{n:x}", "t", {"retrain": "true"})
        for n in range(REMEMBERED_ALERTS + 50)
    ]
    policy.record(alerts)
    assert len(policy.started) == REMEMBERED_ALERTS
    assert policy.choose([alerts[0]])[1] == "started"  # the oldest, forgotten
    assert policy.choose([alerts[-1]])[1] == "already started for this alert"


def start_receiver_process(url: str, package: Path, token: Path, state: Path):
    """``image-finetune-pipeline alert-receiver`` as the Deployment runs it, in its own
    process; the process and its port."""
    receiver = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "image_finetune.pipelines.cli",
            "alert-receiver",
            "--host",
            url,
            "--namespace",
            NAMESPACE,
            "--pipeline-package",
            str(package),
            "--token-file",
            str(token),
            "--port",
            "0",
            "--min-interval",
            "60",
            "--state-file",
            str(state),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "KFP_TOKEN": "kfp-token"},
    )
    started = receiver.stdout.readline()
    match = re.search(r"http://127\.0\.0\.1:(\d+)/alerts", started)
    if match is None:
        receiver.kill()
        pytest.fail(f"the receiver did not start: {started}{receiver.stdout.read()}")
    return receiver, int(match[1])


def post_to(port: int, body: dict) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.request(
        "POST", "/alerts", body=json.dumps(body), headers={"Authorization": f"Bearer {TOKEN}"}
    )
    response = connection.getresponse()
    reply = response.status, json.loads(response.read())
    connection.close()
    return reply


def test_the_command_serves_alertmanager_and_a_restart_remembers_the_started_alert(
    package, tmp_path
):
    """The run is started once; the receiver restarted on the same state file neither starts
    the same alert's run again nor another run within the interval."""
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")  # a mounted Secret often ends in a newline
    state_file = tmp_path / "state" / "alerts.db"
    with fake_kfp() as (url, state):
        for restart, expected in enumerate(
            [(200, "started"), (200, "already started for this alert")]
        ):
            receiver, port = start_receiver_process(url, package, token, state_file)
            try:
                status, reply = post_to(port, notification(alert()))
                assert (status, reply["reason"]) == expected, restart
                if restart:
                    _, other = post_to(port, notification(alert(fingerprint="99ff")))
                    assert other["reason"].startswith("rate limited")
            finally:
                receiver.terminate()
                receiver.wait(timeout=30)
        [run] = state.posted("runs")
    assert run.headers["authorization"] == "Bearer kfp-token"
    assert state.experiments["image-finetune-monitoring"]["namespace"] == NAMESPACE


def test_the_state_file_keeps_a_bounded_number_of_alerts_the_newest(tmp_path):
    clock = Clock()
    alerts = [Alert("a", "firing", f"{n:x}", "t", {"retrain": "true"}) for n in range(8)]
    policy = TriggerPolicy(0, clock, StartedAlerts(tmp_path / "alerts.db", limit=5))
    for one_alert in alerts:
        clock.now += 1
        policy.record([one_alert])
    assert len(policy.started) == 5
    restarted = TriggerPolicy(0, clock, StartedAlerts(tmp_path / "alerts.db", limit=5))
    assert list(restarted.started) == [a.key for a in alerts[3:]]
    assert restarted.last_start == clock.now
    assert restarted.choose([alerts[0]])[1] == "started"  # the oldest, forgotten
    assert restarted.choose([alerts[-1]])[1] == "already started for this alert"


def test_an_unusable_state_file_is_a_clear_error(package, tmp_path):
    token = tmp_path / "token"
    token.write_text(TOKEN)
    not_a_database = tmp_path / "alerts.db"
    not_a_database.write_bytes(b"not sqlite " * 200)
    result = CliRunner().invoke(
        cli.app,
        [
            "alert-receiver",
            "--host",
            "http://127.0.0.1:9",
            "--pipeline-package",
            str(package),
            "--token-file",
            str(token),
            "--port",
            "0",
            "--state-file",
            str(not_a_database),
        ],
    )
    assert result.exit_code == 2 and "--state-file" in result.output
    assert "Traceback" not in result.output


def test_the_command_refuses_a_pipeline_without_images_to_test(tmp_path):
    token = tmp_path / "token"
    token.write_text(TOKEN)
    training = tmp_path / "pipeline.yaml"  # the fine-tuning pipeline: no source_uri
    compile_pipeline(load_params(ROOT / "params.yaml", use_env=False), str(training))
    result = CliRunner().invoke(
        cli.app,
        [
            "alert-receiver",
            "--host",
            "http://127.0.0.1:9",
            "--pipeline-package",
            str(training),
            "--token-file",
            str(token),
            "--port",
            "0",
        ],
    )
    assert result.exit_code == 2 and "compiled with --source-uri" in result.output


def test_the_command_refuses_a_short_token(package, tmp_path):
    token = tmp_path / "token"
    token.write_text("short\n")
    result = CliRunner().invoke(
        cli.app,
        [
            "alert-receiver",
            "--host",
            "http://127.0.0.1:9",
            "--pipeline-package",
            str(package),
            "--token-file",
            str(token),
            "--port",
            "0",
        ],
    )
    assert result.exit_code == 2 and "at least 16 characters" in result.output
