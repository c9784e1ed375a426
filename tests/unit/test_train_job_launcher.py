"""The train-job step's launcher, end to end but for the cluster: the real kubernetes client
talks to a stand-in for the Kubernetes API server (a local HTTP server implementing only the
endpoints the launcher calls: create, read and delete a TFJob, list pods, read a pod's log),
whose scripted "operator" moves the job through its conditions and, as the chief would,
writes the attempt's folder on the "volume" (a temporary folder)."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from image_finetune.config import load_params
from image_finetune.kube import ClusterError, TrainingJobs
from image_finetune.steps.train_job import Clock, Launch, train_job
from image_finetune.training.job_spec import JobPolicy, TrainJobError

ROOT = Path(__file__).resolve().parents[2]
NAMESPACE = "team-ml"
JOBS = re.compile(rf"/apis/kubeflow.org/v1/namespaces/{NAMESPACE}/tfjobs(?:/([^/?]+))?")
PODS = re.compile(rf"/api/v1/namespaces/{NAMESPACE}/pods(?:/([^/?]+)/log)?")
RESULT = {
    "index": 0,
    "rung": "frozen-head",
    "mode": "cached-features",
    "epochs_run": 2,
    "best_val_accuracy": 0.5,
    "train_seconds": 3.0,
    "embed_seconds": 1.0,
    "images_per_second": 100.0,
    "trainable_params": 12,
    "backend": "tensorflow",
    "mixed_precision": False,
}


class FakeApiServer:
    """The stand-in API server's state: the jobs created, and the conditions each GET of a
    job moves it through (the last one stays)."""

    def __init__(self, script: list[str], forbid: bool = False):
        self.script, self.forbid = script, forbid
        self.jobs: dict[str, dict] = {}
        self.reads: dict[str, int] = {}
        self.deleted: list[str] = []
        self.created: list[str] = []
        self.log_queries: list[str] = []

    def advance(self, name: str) -> dict:
        job = self.jobs[name]
        step = self.reads[name] = self.reads.get(name, -1) + 1
        kinds = self.script[: step + 1]
        job["status"] = {
            "conditions": [
                {
                    "type": kind,
                    "status": "True",
                    "reason": f"TFJob{kind}",
                    "message": "worker 0 exited with code 1" if kind == "Failed" else "",
                }
                for kind in kinds
            ]
        }
        if kinds[-1] == "Succeeded":
            self.chief_writes(job)
        return job

    @staticmethod
    def chief_writes(job: dict) -> None:
        command = job["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0][
            "command"
        ]
        out = Path(command[command.index("--out") + 1])
        out.mkdir(parents=True, exist_ok=True)
        for name in ("model.keras", "history.csv"):
            (out / name).write_text(name)
        (out / "result.json").write_text(json.dumps(RESULT))

    def log(self, name: str) -> str:
        reads = self.reads.get(name.removesuffix("-worker-0"), 0)
        return "".join(
            f"2026-01-05T10:00:{second:02d}.000000001Z line {second}\n"
            for second in range(reads + 1)
        )


def handler(server: FakeApiServer):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def reply(self, code: int, body) -> None:
            data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            self.send_response(code)
            self.send_header(
                "Content-Type", "text/plain" if isinstance(body, str) else "application/json"
            )
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def not_found(self):
            self.reply(404, {"kind": "Status", "code": 404, "reason": "NotFound"})

        def do_POST(self):
            if server.forbid:
                return self.reply(403, {"kind": "Status", "code": 403, "reason": "Forbidden"})
            manifest = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            server.jobs[manifest["metadata"]["name"]] = manifest
            server.created.append(manifest["metadata"]["name"])
            self.reply(201, manifest)

        def do_GET(self):
            path, _, query = self.path.partition("?")
            if (match := JOBS.fullmatch(path)) and match[1]:
                if match[1] not in server.jobs:
                    return self.not_found()
                return self.reply(200, server.advance(match[1]))
            if (match := PODS.fullmatch(path)) and match[1]:
                server.log_queries.append(query)
                return self.reply(200, server.log(match[1]))
            if match := PODS.fullmatch(path):
                name = re.search(r"job-name%3D([a-z0-9-]+)", query)[1]
                running = server.reads.get(name, 0) >= 1
                items = [{"metadata": {"name": f"{name}-worker-0"}}] if running else []
                return self.reply(200, {"kind": "PodList", "apiVersion": "v1", "items": items})
            self.not_found()

        def do_DELETE(self):
            match = JOBS.fullmatch(self.path.partition("?")[0])
            server.deleted.append(match[1])
            server.jobs.pop(match[1], None)
            self.reply(200, {"kind": "Status", "status": "Success"})

    return Handler


@pytest.fixture
def api():
    """Start a stand-in API server for a script of conditions; its state and the client."""
    started = []

    def start(script: list[str], forbid: bool = False):
        state = FakeApiServer(script, forbid)
        http = ThreadingHTTPServer(("127.0.0.1", 0), handler(state))
        threading.Thread(target=http.serve_forever, args=(0.05,), daemon=True).start()
        started.append(http)
        configuration = client.Configuration(host=f"http://127.0.0.1:{http.server_port}")
        return state, TrainingJobs(client.ApiClient(configuration), NAMESPACE)

    yield start
    for http in started:
        http.shutdown()


class FakeClock:
    """Time that passes only when the launcher sleeps; what it echoes."""

    def __init__(self):
        self.time, self.echoed = 0.0, []

    def clock(self) -> Clock:
        return Clock(now=lambda: self.time, sleep=self.wait, echo=self.echoed.append)

    def wait(self, seconds: float) -> None:
        self.time += seconds


@pytest.fixture
def inputs(tmp_path):
    data = tmp_path / "dataset"
    (data / "train").mkdir(parents=True)
    (data / "manifest.json").write_text("{}")
    (data / "train" / "images.npy").write_bytes(b"\0" * 64)
    warm = tmp_path / "warm" / "model.keras"
    warm.parent.mkdir()
    warm.write_text("previous rung")
    return {
        "params": load_params(ROOT / "params.yaml", use_env=False),
        "data": data,
        "warm_start": warm,
        "volume": tmp_path / "volume",
    }


def launch(inputs, api_jobs, clock, timeout=3600, index=0):
    volume = inputs["volume"]
    policy = JobPolicy(timeout_seconds=timeout, poll_seconds=10)
    return train_job(
        inputs["params"],
        index,
        inputs["data"],
        volume.parent / "classifier",
        volume / "cache",
        volume.parent,
        Launch("run-1", 2, 1, "image:1-gpu", "image-finetune-cache", str(volume), policy),
        api_jobs,
        inputs["warm_start"],
        clock.clock(),
    )


def test_a_job_that_succeeds_hands_the_chiefs_folder_on(api, inputs):
    server, jobs = api(["Created", "Running", "Running", "Succeeded"])
    clock = FakeClock()
    result = launch(inputs, jobs, clock)
    out = inputs["volume"].parent / "classifier"
    assert {p.name for p in out.iterdir()} == {"model.keras", "history.csv", "result.json"}
    assert result == {**RESULT, "model_path": str(out / "model.keras")}
    [(name, manifest)] = server.jobs.items()
    assert manifest["spec"]["tfReplicaSpecs"]["Worker"]["replicas"] == 2
    # The chief's log, relayed once per line, reads overlapping after the first.
    assert clock.echoed == [f"[{name}-worker-0] line {second}" for second in range(4)]
    assert server.log_queries[0] == "timestamps=True"
    assert all("sinceSeconds=40" in query for query in server.log_queries[1:])
    assert not (inputs["volume"] / "cache" / "jobs" / name).exists()  # staging cleaned up
    assert server.deleted == []  # the operator's TTL removes a finished job


def test_the_workers_get_the_params_with_multi_worker_distribution(api, inputs):
    server, jobs = api(["Created", "Running", "Failed"])
    with pytest.raises(TrainJobError):
        launch(inputs, jobs, FakeClock(), index=1)
    [name] = server.jobs
    folder = inputs["volume"] / "cache" / "jobs" / name
    staged = yaml.safe_load((folder / "params.yaml").read_text())
    assert staged["train"]["distribution"] == "multi_worker"
    assert staged["model"]["weights"] == "imagenet"  # chosen once, for every worker
    assert (folder / "warm_start" / "model.keras").read_text() == "previous rung"
    assert not (folder / "data").exists()  # the staged dataset goes whatever the outcome


def test_a_failed_job_fails_the_task_with_its_reason_and_is_kept_for_its_logs(api, inputs):
    server, jobs = api(["Created", "Running", "Failed"])
    with pytest.raises(
        TrainJobError,
        match=r"failed: TFJobFailed: worker 0 exited with code 1"
        r".*kubectl -n team-ml logs -l training",
    ):
        launch(inputs, jobs, FakeClock())
    assert server.deleted == []


def test_a_job_past_its_timeout_is_deleted(api, inputs):
    server, jobs = api(["Created", "Running"])
    with pytest.raises(TrainJobError, match="did not finish within 25 s; deleted it"):
        launch(inputs, jobs, FakeClock(), timeout=25)
    assert server.deleted == server.created and len(server.created) == 1


def test_a_retried_launcher_follows_the_job_it_created(api, inputs):
    server, jobs = api(["Created", "Running", "Succeeded"])
    launch(inputs, jobs, FakeClock())
    server.reads.clear()
    launch(inputs, jobs, FakeClock())  # the same run and rung: the same job, not a new one
    assert len(server.created) == 1


def test_a_refused_call_says_what_the_service_account_needs(api, inputs):
    _, jobs = api(["Created"], forbid=True)
    with pytest.raises(
        ClusterError,
        match=r"create TFJob .* \(403 Forbidden\): the run's "
        r"service account needs the Role in infra/k8s",
    ):
        launch(inputs, jobs, FakeClock())


def test_a_cache_off_the_shared_volume_is_refused(api, inputs, tmp_path):
    _, jobs = api(["Created"])
    with pytest.raises(TrainJobError, match="is not on the cache volume"):
        train_job(
            inputs["params"],
            0,
            inputs["data"],
            tmp_path / "out",
            tmp_path / "elsewhere",
            tmp_path,
            Launch("run-1", 2, 1, "image", "claim", str(inputs["volume"])),
            jobs,
        )
