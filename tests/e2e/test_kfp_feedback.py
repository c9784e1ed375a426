"""The monitoring pipeline's hand-off of labelled feedback, run for real under kfp.local
(subprocess runner): the export component reads the server's SQLite store, and the ingest
component, given that export as its optional ``extra`` input, adds the labelled images to
train, as the nested retrain does; then the watermark component marks them used."""

import json
import tarfile
import time
from pathlib import Path

from kfp import dsl, local

from image_finetune.components import export_labelled_feedback, ingest_data, mark_feedback_used
from image_finetune.monitoring.feedback_store import FeedbackRecord, FeedbackStore
from tests.support import small_run_params

LABELLED = 6


def real_jpegs(tarball: Path, count: int) -> list[bytes]:
    """The first ``count`` real CIFAR-10 test JPEGs of class cat, as files hold them."""
    found = []
    with tarfile.open(tarball) as archive:
        for member in archive:
            if member.isfile() and member.name.startswith("test/cat/"):
                found.append(archive.extractfile(member).read())
                if len(found) == count:
                    return found
    raise AssertionError("not enough cat images in the archive")


def test_the_exported_feedback_reaches_the_ingest_and_is_then_marked_used(
    cifar_tarball, small_folder, no_top_weights, tmp_path
):
    uri = f"sqlite:///{tmp_path / 'feedback.db'}"
    store = FeedbackStore(uri)
    for index, jpeg in enumerate(real_jpegs(cifar_tarball, LABELLED)):
        store.add(
            FeedbackRecord(
                f"req-{index}",
                0,
                "cat",
                time.time(),
                "1",
                "champion",
                "dog",
                0.7,
                image=jpeg,
                image_format="jpeg",
            )
        )
    store.close()
    data = {
        key: value
        for key, value in small_run_params(  # a KFP struct holds no nulls: None is the default
            small_folder, no_top_weights, {}
        )["data"].items()
        if value is not None
    }

    @dsl.pipeline(name="feedback-into-ingest")
    def hand_off(feedback_uri: str, data: dict):
        exported = export_labelled_feedback(feedback_uri=feedback_uri)
        ingested = ingest_data(data=data, extra=exported.outputs["labels"])
        mark_feedback_used(feedback_uri=feedback_uri, labels=exported.outputs["labels"]).after(
            ingested
        )

    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(tmp_path / "root"),
        raise_on_error=True,
    )
    hand_off(feedback_uri=uri, data=data)
    [manifest] = (tmp_path / "root").rglob("dataset/manifest.json")
    extra = json.loads(manifest.read_text())["extra_training"]
    assert extra["images"] == LABELLED and extra["per_class"]["cat"] == LABELLED
    reopened = FeedbackStore(uri)
    assert reopened.watermark() == max(r.received_at for r in reopened.records())
