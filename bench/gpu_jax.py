"""GPU benchmark with KERAS_BACKEND=jax and no TensorFlow installed.

Ingests the CIFAR-10 JPEG tarball (PIL + numpy only), then climbs a ladder with the
project's own training code and prints, per attempt, training images/s and the wall
time at which validation accuracy first reached the target.
Usage (on the GPU machine):
  KERAS_BACKEND=jax python bench/gpu_jax.py --source cifar10-jpeg.tar.gz \
      --weights mobilenet_v2_1.0_imagenet_no_top.weights.h5 --target 0.90
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")

from image_finetune.config import Params  # noqa: E402
from image_finetune.steps.ingest import ingest_data  # noqa: E402
from image_finetune.steps.train_rung import train_rung  # noqa: E402
from image_finetune.train import accelerator_available  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--source", type=Path, required=True)
    parser.add_argument("--weights", default="none", help="a .weights.h5 file, or none")
    parser.add_argument("--backbone", default="mobilenet_v2")
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--target", type=float, default=0.90)
    args = parser.parse_args()
    params = Params.model_validate({
        "data": {"path": str(args.source)},
        "model": {"backbone": args.backbone, "weights": args.weights,
                  "image_size": args.image_size},
        "train": {"cache_boundary": None, "mixed_precision": "auto", "ladder": [
            {"name": "head", "epochs": 3, "learning_rate": 0.001, "batch_size": 512},
            {"name": "full", "unfreeze_from": "all", "epochs": 8, "learning_rate": 0.0002,
             "warmup_epochs": 0.5, "batch_size": 256, "label_smoothing": 0.1}]},
    })
    print(f"backend {os.environ['KERAS_BACKEND']}, accelerator: {accelerator_available()}")
    with tempfile.TemporaryDirectory() as work:
        data = Path(work) / "data"
        start = time.perf_counter()
        ingest_data(params, data, Path.cwd())
        print(f"ingest {time.perf_counter() - start:.1f} s")
        warm, clock = None, time.perf_counter()
        for index, rung in enumerate(params.train.ladder):
            out = Path(work) / f"attempt_{index}"
            result = train_rung(params, index, data, out, Path(work) / "cache", Path.cwd(), warm)
            with (out / "history.csv").open() as handle:
                accuracies = [float(r["val_accuracy"]) for r in csv.DictReader(handle)]
            per_epoch = result.train_seconds / max(result.epochs_run, 1)
            reached = next((i for i, a in enumerate(accuracies) if a >= args.target), None)
            print(json.dumps({
                "attempt": index, "rung": rung.name, "mode": result.mode,
                "images_per_second": result.images_per_second,
                "mixed_precision": result.mixed_precision,
                "best_val_accuracy": round(max(accuracies), 4),
                "seconds_to_target": None if reached is None else round(
                    time.perf_counter() - clock - result.train_seconds
                    + per_epoch * (reached + 1), 1),
            }))
            warm = Path(result.model_path)


if __name__ == "__main__":
    main()
