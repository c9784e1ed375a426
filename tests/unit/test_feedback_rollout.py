"""Labelled feedback and the live rollout decision, below the server: the durable store's
bounds and pairs, the bounded memory of answered requests, the token bucket, the canary's
deterministic split and the McNemar rule on live pairs."""

from __future__ import annotations

import time

import numpy as np
import pytest

from image_finetune.monitoring.feedback_store import (
    FeedbackRecord,
    FeedbackRefused,
    FeedbackStore,
)
from image_finetune.monitoring.rollout import decide_rollout
from image_finetune.serving.errors import Rejected
from image_finetune.serving.feedback import (
    AnsweredImage,
    RecentRequests,
    TokenBucket,
    new_request_id,
)
from image_finetune.serving.rollout import in_canary
from image_finetune.serving.settings import operate_from_env

NAMES = ["cat", "dog"]


def record(
    request_id: str, label: str, served: str = "cat", other: str | None = "dog", index: int = 0
) -> FeedbackRecord:
    return FeedbackRecord(
        request_id,
        index,
        label,
        time.time(),
        "1",
        "champion",
        served,
        0.9,
        "2" if other else None,
        other,
        0.6 if other else None,
        b"\xff\xd8",
        "jpeg",
    )


def test_the_store_keeps_feedback_across_reopening_and_refuses_duplicates(tmp_path):
    uri = f"sqlite:///{tmp_path / 'feedback.db'}"
    store = FeedbackStore(uri)
    store.add(record("a", "cat"))
    with pytest.raises(FeedbackRefused) as refused:
        store.add(record("a", "dog"))
    assert refused.value.reason == "duplicate"
    store.add(record("a", "dog", index=1))  # another image of the same request
    store.close()
    reopened = FeedbackStore(uri)
    assert reopened.count() == 2
    assert [r.label for r in reopened.records(with_images=True)] == ["cat", "dog"]
    assert reopened.accuracy_by_version() == {"1": (1, 2), "2": (1, 2)}


def test_a_full_store_refuses_new_feedback_and_keeps_the_old(tmp_path):
    store = FeedbackStore(str(tmp_path / "feedback.db"), max_rows=2)
    store.add(record("a", "cat"))
    store.add(record("b", "cat"))
    with pytest.raises(FeedbackRefused) as refused:
        store.add(record("c", "cat"))
    assert refused.value.reason == "store_full" and store.count() == 2
    by_bytes = FeedbackStore(str(tmp_path / "small.db"), max_bytes=3)
    by_bytes.add(record("a", "cat"))  # two bytes of image
    with pytest.raises(FeedbackRefused, match="2 of 3 bytes"):
        by_bytes.add(record("b", "cat"))


def test_pairs_are_the_images_both_versions_answered(tmp_path):
    store = FeedbackStore(str(tmp_path / "feedback.db"))
    store.add(record("a", "cat"))
    store.add(record("b", "dog", other=None))  # the challenger never answered it
    pairs = store.pairs("1", "2")
    assert len(pairs) == 1 and list(pairs.champion) == ["cat"]
    assert list(pairs.challenger) == ["dog"] and list(pairs.challenger_confidence) == [0.6]


def pairs_of(tmp_path, champion: list[str], challenger: list[str], labels: list[str]):
    store = FeedbackStore(str(tmp_path / "pairs.db"))
    for i, (a, b, truth) in enumerate(zip(champion, challenger, labels, strict=True)):
        store.add(record(f"r{i}", truth, served=a, other=b))
    return store.pairs("1", "2")


@pytest.mark.parametrize("wins,losses,promote", [(12, 0, True), (0, 12, False), (6, 6, False)])
def test_the_live_decision_is_the_gates_mcnemar_rule(tmp_path, wins, losses, promote):
    champion = ["dog"] * wins + ["cat"] * losses + ["cat"] * 10
    challenger = ["cat"] * wins + ["dog"] * losses + ["cat"] * 10
    pairs = pairs_of(tmp_path, champion, challenger, ["cat"] * len(champion))
    decision = decide_rollout(pairs, "1", "2", min_pairs=20, significance=0.05)
    assert decision.promote is promote
    assert f"candidate-only correct {wins}, champion-only correct {losses}" in decision.reasons[0]


def test_too_few_pairs_refuse_and_show_agreement_and_confidence(tmp_path):
    pairs = pairs_of(tmp_path, ["dog"] * 5, ["cat"] * 5, ["cat"] * 5)
    decision = decide_rollout(pairs, "1", "2", min_pairs=20, significance=0.05)
    assert not decision.promote
    assert decision.reasons[0].startswith("not enough labelled pairs: 5 of the 20")
    assert decision.evidence["agreement"] == 0.0
    assert decision.evidence["challenger_confidence"] == pytest.approx(0.6)


def answered(size: int = 10) -> list[AnsweredImage]:
    return [AnsweredImage("1", "champion", "cat", 0.9, NAMES, b"x" * size)]


def test_answered_requests_are_bounded_in_count_and_bytes():
    recent = RecentRequests(max_requests=3, max_bytes=25, ttl=60)
    ids = [new_request_id() for _ in range(5)]
    for request_id in ids:
        recent.remember(request_id, answered())
    assert len(recent) == 2 and recent.bytes == 20  # 25 bytes hold two of ten
    recent.find(ids[-1])
    with pytest.raises(Rejected) as expired:
        recent.find(ids[0])
    assert expired.value.status == 410
    with pytest.raises(Rejected) as unknown:
        recent.find("ffffffffffff-0123456789abcdef")  # issued in the future: never here
    assert unknown.value.status == 404


def test_answered_requests_expire_and_an_image_is_labelled_once():
    recent = RecentRequests(max_requests=10, max_bytes=1000, ttl=0.2)
    request_id = new_request_id()
    recent.remember(request_id, answered())
    recent.claim(request_id, 0)
    with pytest.raises(FeedbackRefused):
        recent.claim(request_id, 0)
    time.sleep(0.3)
    with pytest.raises(Rejected) as expired:
        recent.claim(request_id, 0)
    assert expired.value.status == 410


def test_the_token_bucket_allows_its_burst_then_its_rate():
    bucket = TokenBucket(rate=10, burst=5)
    assert [bucket.take() for _ in range(6)] == [True] * 5 + [False]
    time.sleep(0.25)
    assert bucket.take() and bucket.take() and not bucket.take()


def test_the_canary_split_is_deterministic_and_near_its_share():
    ids = [f"{i:011x}-{i:016x}" for i in range(4000)]
    chosen = [in_canary(request_id, 25) for request_id in ids]
    assert chosen == [in_canary(request_id, 25) for request_id in ids]
    assert abs(np.mean(chosen) - 0.25) < 0.03
    assert not any(in_canary(request_id, 0) for request_id in ids)
    assert all(in_canary(request_id, 100) for request_id in ids)


def test_operate_settings_come_from_the_environment_validated():
    settings = operate_from_env(
        {
            "IMAGE_FINETUNE_ROLLOUT": "canary",
            "IMAGE_FINETUNE_CANARY_PERCENT": "30",
            "IMAGE_FINETUNE_MONITOR": "off",
        }
    )
    assert (settings.rollout, settings.canary_percent, settings.monitor) == ("canary", 30, False)
    with pytest.raises(ValueError, match="rollout"):
        operate_from_env({"IMAGE_FINETUNE_ROLLOUT": "blue-green"})
