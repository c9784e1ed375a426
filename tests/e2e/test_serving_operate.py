"""Operating the served model, told as one scenario over real server processes: request ids
and labelled feedback (every bad feedback gets its specific 4xx and changes nothing), the
challenger in shadow beside the champion, ``rollout promote`` refusing without enough labels,
refusing a worse and an equally good challenger and promoting a better one, then a restart
in canary mode: the split follows the request ids, the feedback survived, and ``feedback
export`` writes it as an image-folder tree.

The labels are the test's to choose: a challenger is "better" when the labels the client
sends agree with it more often. The challengers are the champion with its classes rotated by
one, so on every image the two disagree and the client knows what each answered."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from image_finetune.monitoring.feedback_store import FeedbackStore
from image_finetune.registry.client import client_for
from image_finetune.registry.versions import version_by_alias
from image_finetune.serving.rollout import in_canary
from image_finetune.steps.evaluate import evaluate_classifier
from image_finetune.steps.final_gate import final_gate
from tests.e2e.serving_support import own_registry_params, register, relabelled_copy, serve
from tests.support import wait_until

pytestmark = pytest.mark.ordered
REQUESTS = 30  # per challenger
MIN_PAIRS = 20


@pytest.fixture(scope="module")
def scene(champion, tmp_path_factory):
    """The serving tests' champion registered as v1 in a registry of this module's own,
    the rotated challenger evaluated once, and the environment of its servers."""
    work = tmp_path_factory.mktemp("operate")
    params, params_file = own_registry_params(champion, work)
    assert (
        register(
            params,
            champion["data"],
            champion["evaluation"],
            champion["decision"],
            champion["model_path"],
            "operate-1",
        )["version"]
        == "1"
    )
    rotated = relabelled_copy(champion["model_path"], work / "rotated.keras")
    evaluation = work / "evaluation-rotated"
    evaluate_classifier(params, champion["data"], rotated, evaluation, "test", "rotated")
    final_gate(params, evaluation, work / "gate-rotated.json")
    feedback = f"sqlite:///{work / 'feedback.db'}"
    env = {
        "MLFLOW_TRACKING_URI": params.registry.tracking_uri,
        "IMAGE_FINETUNE_MODEL_NAME": params.registry.model_name,
        "IMAGE_FINETUNE_POLL_SECONDS": "1",
        "IMAGE_FINETUNE_FEEDBACK_URI": feedback,
        "IMAGE_FINETUNE_FEEDBACK_RATE": "20",
        "IMAGE_FINETUNE_FEEDBACK_BURST": "60",
    }
    files = sorted((champion["folder"] / "test").glob("*/*.jpg"))
    return {
        "params": params,
        "params_file": params_file,
        "work": work,
        "env": env,
        "rotated": rotated,
        "evaluation": evaluation,
        "feedback": feedback,
        "data": champion["data"],
        "files": files,
        "state": {},
    }


def register_challenger(scene, run: str) -> str:
    """The rotated model registered once more: a new version under @challenger."""
    outcome = register(
        scene["params"],
        scene["data"],
        scene["evaluation"],
        scene["work"] / "gate-rotated.json",
        scene["rotated"],
        run,
    )
    assert outcome["registered"] and not outcome["promoted"]
    return outcome["version"]


@pytest.fixture(scope="module")
def shadow_server(scene):
    running = serve({**scene["env"], "IMAGE_FINETUNE_ROLLOUT": "shadow"}, [], scene["work"])
    yield running
    running.stop()


def classify_each(url: str, files: list[Path]) -> list[dict]:
    """Each file alone; the answers, each with its request id (header and body agree)."""
    answers = []
    with httpx.Client(timeout=60) as http:
        for file in files:
            response = http.post(
                f"{url}/predict", content=file.read_bytes(), headers={"content-type": "image/jpeg"}
            )
            assert response.status_code == 200, response.text
            body = response.json()
            assert response.headers["x-request-id"] == body["request_id"]
            answers.append(body)
    return answers


def top(answer: dict) -> str:
    return answer["predictions"][0]["top_k"][0]["class"]


def rotated(label: str, names: list[str]) -> str:
    """What the rotated challenger answers where the champion answers ``label``."""
    return names[(names.index(label) + 1) % len(names)]


def label(url: str, request_id: str, name: str, **extra) -> httpx.Response:
    return httpx.post(
        f"{url}/feedback", json={"request_id": request_id, "label": name, **extra}, timeout=30
    )


def rollout_state(url: str) -> dict:
    response = httpx.get(f"{url}/rollout", timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def wait_for_challenger(url: str, version: str) -> None:
    wait_until(lambda: rollout_state(url)["challenger"] == version, timeout=180)


def run_cli(scene, *args: str) -> subprocess.CompletedProcess:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("IMAGE_FINETUNE_", "MLFLOW_"))},
        "IMAGE_FINETUNE_FEEDBACK_URI": scene["feedback"],
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    return subprocess.run(
        [sys.executable, "-m", "image_finetune.cli", *args, "--params", str(scene["params_file"])]
        if args[0] == "rollout"
        else [sys.executable, "-m", "image_finetune.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def champion_version(scene) -> str:
    registry = scene["params"].registry
    return str(version_by_alias(client_for(registry), registry.model_name, "champion").version)


def test_shadow_answers_copies_that_are_only_recorded(scene, shadow_server):
    url = shadow_server.url
    challenger = register_challenger(scene, "operate-2")
    wait_for_challenger(url, challenger)
    answers = classify_each(url, scene["files"][:REQUESTS])
    assert {a["model_version"] for a in answers} == {"1"}  # the champion answers them all
    wait_until(
        lambda: rollout_state(url)["versions"].get(challenger, {}).get("requests") == REQUESTS,
        timeout=60,
    )
    state = rollout_state(url)
    assert state["mode"] == "shadow" and state["champion"] == "1"
    assert state["versions"][challenger]["agreement"] == 0.0  # rotated: never the same
    assert state["versions"][challenger]["images"] == REQUESTS
    metrics = httpx.get(f"{url}/metrics").text
    assert (
        f'image_finetune_rollout_requests_total{{model_version="{challenger}",'
        f'role="shadow"}} {REQUESTS}.0'
    ) in metrics
    scene["state"].update(
        challenger=challenger,
        answers=answers,
        names=httpx.get(f"{url}/metadata").json()["class_names"],
    )


def test_bad_feedback_gets_its_specific_refusal_and_changes_nothing(scene, shadow_server):
    url, answers = shadow_server.url, scene["state"]["answers"]
    first = answers[0]["request_id"]
    forged = first[:-4] + ("0000" if not first.endswith("0000") else "1111")
    assert label(url, "not-an-id", "cat").status_code == 404
    assert label(url, forged, "cat").status_code == 410  # well formed, not remembered
    assert label(url, first, "no-such-class").status_code == 422
    assert label(url, first, "cat", image_index=3).status_code == 422
    assert httpx.post(f"{url}/feedback", content=b"{not json", timeout=30).status_code == 422
    assert FeedbackStore(scene["feedback"]).count() == 0
    accepted = label(url, first, top(answers[0]))
    assert accepted.status_code == 201, accepted.text
    assert accepted.json()["correct"] is True and accepted.json()["model_version"] == "1"
    assert label(url, first, top(answers[0])).status_code == 409
    assert FeedbackStore(scene["feedback"]).count() == 1
    metrics = httpx.get(f"{url}/metrics").text
    for outcome in ("unknown_request", "unknown_label", "duplicate", "accepted"):
        assert f'outcome="{outcome}"' in metrics


def test_a_flood_of_feedback_is_rate_limited(scene, shadow_server):
    async def flood() -> list[int]:
        async with httpx.AsyncClient(timeout=30) as http:
            posts = [
                http.post(
                    f"{shadow_server.url}/feedback", json={"request_id": "flood", "label": "cat"}
                )
                for _ in range(300)
            ]
            return [r.status_code for r in await asyncio.gather(*posts)]

    statuses = asyncio.run(flood())
    assert set(statuses) == {404, 429} and statuses.count(429) >= 100
    assert FeedbackStore(scene["feedback"]).count() == 1
    wait_until(lambda: label(shadow_server.url, "x", "cat").status_code == 404, timeout=10)


def promote_cli(scene) -> subprocess.CompletedProcess:
    return run_cli(scene, "rollout", "promote", "--min-pairs", str(MIN_PAIRS))


def test_rollout_refuses_without_labels_then_refuses_a_worse_challenger(scene, shadow_server):
    url, state = shadow_server.url, scene["state"]
    refused = promote_cli(scene)
    assert refused.returncode == 6, refused.stderr
    assert "not enough labelled pairs: 1 of the 20" in refused.stderr  # the one label above
    for answer in state["answers"][1:]:  # the champion was right every time
        assert label(url, answer["request_id"], top(answer)).status_code == 201
    refused = promote_cli(scene)
    assert refused.returncode == 6 and "not significantly better" not in refused.stderr
    assert (
        "McNemar vs champion v1: candidate-only correct 0, champion-only correct 30"
        in refused.stderr
    )
    status = run_cli(scene, "rollout", "status", "--min-pairs", str(MIN_PAIRS))
    evidence = yaml.safe_load(status.stdout)["evidence"]
    assert evidence["labelled_pairs"] == REQUESTS and evidence["agreement"] == 0.0
    assert evidence["champion_accuracy"] == 1.0 and evidence["challenger_accuracy"] == 0.0
    assert champion_version(scene) == "1"
    metrics = httpx.get(f"{url}/metrics").text
    assert 'image_finetune_online_accuracy{model_version="1"} 1.0' in metrics
    assert f'image_finetune_online_accuracy{{model_version="{state["challenger"]}"}} 0.0' in metrics


def test_rollout_refuses_an_equally_good_challenger(scene, shadow_server):
    url, names = shadow_server.url, scene["state"]["names"]
    challenger = register_challenger(scene, "operate-3")
    wait_for_challenger(url, challenger)
    answers = classify_each(url, scene["files"][REQUESTS : 2 * REQUESTS])
    wait_until(
        lambda: rollout_state(url)["versions"].get(challenger, {}).get("requests") == REQUESTS,
        timeout=60,
    )
    for i, answer in enumerate(answers):  # each right on half of the images
        truth = top(answer) if i % 2 else rotated(top(answer), names)
        assert label(url, answer["request_id"], truth).status_code == 201
    refused = promote_cli(scene)
    assert refused.returncode == 6, refused.stderr
    assert "candidate-only correct 15, champion-only correct 15" in refused.stderr
    assert champion_version(scene) == "1"


def test_rollout_promotes_a_better_challenger(scene, shadow_server):
    url, names = shadow_server.url, scene["state"]["names"]
    challenger = register_challenger(scene, "operate-4")
    wait_for_challenger(url, challenger)
    answers = classify_each(url, scene["files"][2 * REQUESTS : 3 * REQUESTS])
    wait_until(
        lambda: rollout_state(url)["versions"].get(challenger, {}).get("requests") == REQUESTS,
        timeout=60,
    )
    for answer in answers:
        assert label(url, answer["request_id"], rotated(top(answer), names)).status_code == 201
    promoted = promote_cli(scene)
    assert promoted.returncode == 0, promoted.stderr
    assert champion_version(scene) == challenger
    registry = scene["params"].registry
    assert version_by_alias(client_for(registry), registry.model_name, "challenger") is None
    wait_until(
        lambda: httpx.get(f"{url}/readyz").json().get("model_version") == challenger,
        timeout=120,
        what="the server never served the promoted challenger",
    )
    assert rollout_state(url)["challenger"] is None
    scene["state"]["champion"] = challenger


def test_after_a_restart_in_canary_mode_feedback_survives_and_the_split_follows_ids(
    scene, shadow_server, tmp_path
):
    shadow_server.stop()
    registry = scene["params"].registry
    client_for(registry).set_registered_model_alias(registry.model_name, "challenger", "2")
    champion = scene["state"]["champion"]
    canary = serve(
        {**scene["env"], "IMAGE_FINETUNE_ROLLOUT": "canary", "IMAGE_FINETUNE_CANARY_PERCENT": "40"},
        [],
        scene["work"],
    )
    try:
        wait_for_challenger(canary.url, "2")
        old = scene["state"]["answers"][0]["request_id"]
        assert label(canary.url, old, top(scene["state"]["answers"][0])).status_code == 410
        answers = classify_each(canary.url, scene["files"][3 * REQUESTS : 6 * REQUESTS])
        served = [a["model_version"] for a in answers]
        assert served == ["2" if in_canary(a["request_id"], 40) else champion for a in answers]
        assert 0 < served.count("2") < len(served)
        metrics = httpx.get(f"{canary.url}/metrics").text
        assert (
            f'image_finetune_rollout_requests_total{{model_version="2",role="canary"}} '
            f"{served.count('2')}.0"
        ) in metrics
        assert rollout_state(canary.url)["versions"]["1"]["labelled"] == 3 * REQUESTS
        aborted = run_cli(scene, "rollout", "abort")
        assert aborted.returncode == 0, aborted.stderr
        wait_until(lambda: rollout_state(canary.url)["challenger"] is None, timeout=60)
        assert {a["model_version"] for a in classify_each(canary.url, scene["files"][:20])} == {
            champion
        }
    finally:
        canary.stop()
    exported = run_cli(scene, "feedback", "export", "--out", str(tmp_path / "feedback"))
    assert exported.returncode == 0, exported.stderr
    files = sorted((tmp_path / "feedback" / "train").glob("*/*.jpg"))
    assert len(files) == 3 * REQUESTS
    originals = {f.read_bytes() for f in scene["files"][: 3 * REQUESTS]}
    assert {f.read_bytes() for f in files} == originals
