"""Benchmark: your own images. For a few dataset sizes, the pipeline's test accuracy next to
the frozen-features + logistic-regression baseline on the same split.

Each dataset: three CIFAR-10 classes under other names (cat -> kitty, ship -> boat, frog ->
toad) as 48x48 PNGs, N training images per class (N = 50, 200, 1000) and the same 300 test
images per class. The pipeline: the default params.yaml (only data.path and data.image_size
changed), ingest -> validate -> every rung of the ladder (each evaluated on validation) ->
test. Its pick is the first attempt the default gate passes. The baseline: the same frozen
backbone at the same resolution, pooled features of the training images and their mirrored
copies, scikit-learn's LogisticRegression with its defaults. With --cifar10, the baseline
of one more row: CIFAR-10 in full (4,500 training images per class, 1,000 test), the
default params.yaml as it is; the pipeline's side of that row is `bash bench/repro.sh`
(the same split: ingest is seeded), which takes a quarter of an hour.
With --layout class, the same images sit in class folders without splits (``<class>/*.png``,
the layout Keras and torchvision read): ingest holds out data.test_fraction of them as test
and data.validation_fraction as validation, by each file's content, so the test set is about
a tenth of N + 300 per class rather than the 300, and both sides use that split.
Usage: python bench/own_data.py [--sizes 50 200 1000] [--cifar10] [--layout split|class]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tarfile
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("IMAGE_FINETUNE_SHARED", ROOT.parent / "shared"))
RENAMED = {"cat": "kitty", "ship": "boat", "frog": "toad"}
SIZE, TEST_PER_CLASS = 48, 300


def make_folder(out: Path, train_per_class: int, layout: str = "split") -> Path:
    """The user's folder tree: renamed classes, 48x48 PNGs, in split folders
    (``split/class/*.png``) or class folders (``class/*.png``)."""
    from PIL import Image

    wanted = {"train": train_per_class, "test": TEST_PER_CLASS}
    taken: dict[tuple[str, str], int] = {}
    with tarfile.open(SHARED / "data" / "cifar10-jpeg.tar.gz") as archive:
        for member in archive:
            parts = Path(member.name).parts
            if not member.isfile() or len(parts) != 3 or parts[1] not in RENAMED:
                continue
            key = (parts[0], RENAMED[parts[1]])
            if taken.get(key, 0) >= wanted[parts[0]]:
                continue
            taken[key] = taken.get(key, 0) + 1
            name = f"{Path(parts[2]).stem}.png"
            target = (
                out / key[0] / key[1] / name
                if layout == "split"
                else out / key[1] / f"{key[0]}-{name}"
            )
            target.parent.mkdir(parents=True, exist_ok=True)
            image = Image.open(archive.extractfile(member)).convert("RGB")
            image.resize((SIZE, SIZE), Image.Resampling.BICUBIC).save(target)
    return out


def the_params(folder: Path | None):
    """The default params with the user's data (None: CIFAR-10 as configured) and a gate
    nobody passes, so every rung runs; the default gate picks afterwards."""
    import yaml

    from image_finetune.config import Params

    tree = yaml.safe_load((ROOT / "params.yaml").read_text())
    if folder is None:
        tree["data"]["path"] = str(SHARED / "data" / Path(tree["data"]["path"]).name)
    else:
        tree["data"].update(path=str(folder), image_size=SIZE)
    tree["model"]["weights"] = str(SHARED / "weights" / Path(tree["model"]["weights_file"]).name)
    default_gate = Params.model_validate(tree).gate
    tree["gate"]["min_accuracy"] = 1.0
    return Params.model_validate(tree), default_gate


def run_pipeline(params, default_gate, work: Path) -> dict:
    """Every rung, each attempt's test accuracy, and the attempt the default gate picks."""
    from image_finetune.errors import GateFailedError
    from image_finetune.gate import decide
    from image_finetune.steps.climb_ladder import climb_ladder
    from image_finetune.steps.evaluate import evaluate_classifier
    from image_finetune.steps.ingest import ingest_data
    from image_finetune.steps.validate import validate_data

    data = work / "data"
    ingest_data(params, data, ROOT)
    validate_data(params, data, work / "validation")
    with contextlib.suppress(GateFailedError):  # the gate above lets every rung run
        climb_ladder(
            params, data, work / "validation" / "result.json", work / "models", work / "cache", ROOT
        )
    attempts, pick = [], None
    for index in range(len(params.train.ladder)):
        folder = work / "models" / f"attempt_{index}"
        validation = json.loads((folder / "evaluation" / "details.json").read_text())
        test = evaluate_classifier(
            params, data, folder / "model.keras", work / f"test_{index}", "test"
        )
        attempts.append({"validation": validation["accuracy"], "test": test["accuracy"]})
        if pick is None and decide(validation, default_gate, "validation").passed:
            pick = index
    return {"attempts": attempts, "pick": pick}


def run_baseline(params, work: Path) -> float:
    """Frozen pooled features (with mirrored copies) + LogisticRegression(), test accuracy."""
    import keras
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from image_finetune.data.canonical import load_split
    from image_finetune.inference import predict_batches
    from image_finetune.training.features import stem_model
    from image_finetune.training.fit import build_rung_classifier
    from image_finetune.training.plan import DataFacts, RuntimeFacts, plan_rung

    train, test = load_split(work / "data", "train"), load_split(work / "data", "test")
    classes = int(np.max(train.labels)) + 1
    plan = plan_rung(
        params, 0, DataFacts(len(train.labels), 0, ""), RuntimeFacts(keras.config.backend(), False)
    )
    classifier = build_rung_classifier(
        plan, classes, params.data.image_size, params.model.weights_path(ROOT), None
    )
    pooled = keras.Sequential([stem_model(classifier, None), keras.layers.GlobalAveragePooling2D()])

    def features(images, name):
        return predict_batches(pooled, np.asarray(images), 128, name)

    x = np.concatenate(
        [
            features(train.images, "train"),
            features(np.asarray(train.images)[:, :, ::-1], "mirrored"),
        ]
    )
    y = np.tile(np.asarray(train.labels), 2)
    fit = LogisticRegression(max_iter=2000).fit(x, y)
    return float(fit.score(features(test.images, "test"), np.asarray(test.labels)))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="*", default=[50, 200, 1000])
    parser.add_argument(
        "--cifar10", action="store_true", help="and the baseline on CIFAR-10 in full"
    )
    parser.add_argument(
        "--layout",
        choices=("split", "class"),
        default="split",
        help="split folders, or class folders that ingest splits by content",
    )
    args = parser.parse_args()
    rows = []
    for size in args.sizes:
        with tempfile.TemporaryDirectory(prefix=f"own-data-{size}-") as scratch:
            work = Path(scratch)
            params, default_gate = the_params(make_folder(work / "images", size, args.layout))
            start = time.perf_counter()
            pipeline = run_pipeline(params, default_gate, work)
            seconds = time.perf_counter() - start
            rows.append(
                {
                    "size": size,
                    "baseline": run_baseline(params, work),
                    "seconds": seconds,
                    **pipeline,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    if args.cifar10:
        from image_finetune.steps.ingest import ingest_data

        with tempfile.TemporaryDirectory(prefix="own-data-cifar10-") as scratch:
            params, _ = the_params(None)
            ingest_data(params, Path(scratch) / "data", ROOT)
            baseline = run_baseline(params, Path(scratch))
            print(json.dumps({"size": "CIFAR-10", "baseline": baseline}), flush=True)
    held_out = (
        f"{TEST_PER_CLASS} test images per class"
        if args.layout == "split"
        else "class folders, test and validation held out by content"
    )
    print(f"\n3 classes, {SIZE}x{SIZE} PNGs, {held_out}; the default params.yaml")
    print(
        "| training images per class | baseline (frozen + LogisticRegression) | "
        "attempt 0 (head) | attempt 1 (fine-tuned) | the default gate picks | "
        "pipeline wall |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for row in rows:
        tests = [f"{a['test']:.3f} (val {a['validation']:.3f})" for a in row["attempts"]]
        pick = "none passes" if row["pick"] is None else f"attempt {row['pick']}"
        size = row["size"] if args.layout == "split" else f"{row['size']} + {TEST_PER_CLASS} pooled"
        print(
            f"| {size} | {row['baseline']:.3f} | {' | '.join(tests)} | {pick} | "
            f"{row['seconds']:.0f} s |"
        )
    if args.cifar10:
        print(f"| CIFAR-10 (4,500) | {baseline:.3f} | `bash bench/repro.sh` | | | |")


if __name__ == "__main__":
    sys.exit(main())
