"""The GPU check: the GPU profile (params-gpu.yaml) end to end on a machine with a GPU and
JAX but no TensorFlow and no network, with both backbones whose weights exist here.

Prints, per backbone (MobileNetV2, EfficientNet-Lite0):
- training images/s per GPU at 160 and 224 px (every layer trainable, the profile's batch,
  steady state after compilation);
- the seconds of training to 95% and 97% test accuracy: the profile's ladder, the test set
  evaluated after every epoch (evaluation time excluded; a benchmark, not the pipeline,
  which reads the test set once);
- peak GPU memory.
Run it through ``bench/gpu_check.sh``, which installs the carried wheels first. Everything
it reads comes from ``--assets`` (see ``bash bench/gpu_check.sh --prepare``). ``--dry-run``
takes a tiny subset and one step per phase, on any device (CI runs it on a CPU).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")

ROOT = Path(__file__).resolve().parents[1]
DATA_FILE = "cifar10-jpeg.tar.gz"
WEIGHTS = {
    "mobilenet_v2": "mobilenet_v2_1.0_imagenet_no_top.weights.h5",
    "efficientnet_lite0": "efficientnet_lite0_imagenet_torch_layout.npz",
}
IMAGE_SIZES = (160, 224)
TARGETS = (0.95, 0.97)
NEEDED_MODULES = ("keras", "jax", "pydantic", "yaml", "PIL", "h5py", "numpy", "tqdm")


def missing_assets(assets: Path, backbones: list[str]) -> list[str]:
    """What the check cannot run without, each with how to get it."""
    problems = []
    for module in NEEDED_MODULES:
        try:
            __import__(module)
        except ImportError as exc:
            problems.append(
                f"Python package {module!r} cannot be imported ({exc}): run "
                "through bench/gpu_check.sh, which installs .gpu-check/wheels"
            )
    files = [assets / "data" / DATA_FILE] + [assets / "weights" / WEIGHTS[b] for b in backbones]
    problems += [
        f"missing {path}: run `bash bench/gpu_check.sh --prepare` on a machine that has ../shared"
        for path in files
        if not path.is_file()
    ]
    return problems


def accelerator_problem(dry_run: bool) -> str | None:
    """Why this run cannot measure a GPU (None when it can, or for a dry run)."""
    import keras

    if keras.config.backend() != "jax":
        return f"KERAS_BACKEND is {keras.config.backend()!r}; this check runs on JAX"
    import jax

    devices = jax.devices()
    if dry_run or devices[0].platform == "gpu":
        return None
    return f"no GPU visible to JAX (devices: {devices}); a CPU run needs --dry-run"


def peak_memory_gib() -> float | None:
    """Peak bytes the first device's allocator has held, in GiB (None where not reported)."""
    import jax

    stats = jax.local_devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else round(peak / 2**30, 2)


@dataclass
class Clock:
    """Training seconds of a ladder: wall time from the start, test evaluations excluded."""

    start: float = field(default_factory=time.perf_counter)
    paused: float = 0.0

    def seconds(self) -> float:
        return time.perf_counter() - self.start - self.paused


def test_accuracy_clock(
    test, n_classes: int, clock: Clock, budget: float, targets, max_steps: int | None
):
    """A Keras callback: evaluate ``test`` after every epoch, note when each target is
    reached, stop once the highest is reached or the budget is spent."""
    import keras

    labels = keras.utils.to_categorical(test.labels, n_classes)

    class TestAccuracyClock(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.curve: list[dict] = []
            self.reached: dict[float, float] = {}
            self.steps = 0

        def on_train_batch_end(self, batch, logs=None):
            self.steps += 1
            if clock.seconds() > budget or (max_steps and self.steps >= max_steps):
                self.model.stop_training = True

        def on_epoch_end(self, epoch, logs=None):
            paused_at = time.perf_counter()
            seconds = clock.seconds()
            accuracy = self.model.evaluate(
                test.images, labels, batch_size=1024, verbose=0, return_dict=True
            )["accuracy"]
            clock.paused += time.perf_counter() - paused_at
            self.curve.append({"seconds": round(seconds, 1), "test_accuracy": round(accuracy, 4)})
            print(f"    {seconds:7.1f} s  test accuracy {accuracy:.4f}", flush=True)
            for target in targets:
                if accuracy >= target and target not in self.reached:
                    self.reached[target] = round(seconds, 1)
            if len(self.reached) == len(targets):
                self.model.stop_training = True

    return TestAccuracyClock()


def measure_throughput(
    params, backbone: str, size: int, n_classes: int, train, weights: Path, steps: int, warmup: int
) -> float:
    """Training images/s of the whole classifier (every layer trainable) at ``size`` px."""
    import keras

    from image_finetune.training.fit import build_rung_classifier, compile_for_rung
    from image_finetune.training.model import set_trainable
    from image_finetune.training.plan import DataFacts, RuntimeFacts, plan_rung

    params = with_model(params, backbone, weights, image_size=size)
    plan = plan_rung(
        params,
        len(params.train.ladder) - 1,
        DataFacts(len(train.labels), 0, ""),
        RuntimeFacts(keras.config.backend(), True),
    )
    rung = plan.written  # as written: the batch is the one measured
    classifier = build_rung_classifier(plan, n_classes, int(train.images.shape[1]), weights, None)
    set_trainable(classifier.backbone, "all")
    model = classifier.model
    compile_for_rung(rung, plan.jit_compile, model, steps_per_epoch=max(steps + warmup, 1))
    batch = rung.batch_size
    rows = [(i * batch) % max(len(train.labels) - batch, 1) for i in range(steps + warmup)]
    labels = keras.utils.to_categorical(train.labels, n_classes)
    for start in rows[:warmup]:  # compiles; train_on_batch returns host floats: each call syncs
        model.train_on_batch(train.images[start : start + batch], labels[start : start + batch])
    began = time.perf_counter()
    for start in rows[warmup:]:
        model.train_on_batch(train.images[start : start + batch], labels[start : start + batch])
    return steps * min(batch, len(train.labels)) / (time.perf_counter() - began)


def time_to_accuracy(
    params,
    backbone: str,
    data: Path,
    work: Path,
    weights: Path,
    test,
    budget: float,
    max_steps: int | None,
) -> dict:
    """Climb the profile's ladder (every rung, whatever the gate) with the test clock."""
    from image_finetune.steps.train_rung import train_rung

    params = with_model(params, backbone, weights)
    clock, warm, curves, reached = Clock(), None, [], {}
    for index, rung in enumerate(params.train.ladder):
        if clock.seconds() > budget:
            break
        observer = test_accuracy_clock(
            test, int(test.labels.max()) + 1, clock, budget, TARGETS, max_steps
        )
        print(f"  rung {index} {rung.name}", flush=True)
        result = train_rung(
            params,
            index,
            data,
            work / backbone / str(index),
            work / "cache",
            ROOT,
            warm,
            observers=[observer],
        )
        warm = Path(result.model_path)
        curves += [{"rung": rung.name, **point} for point in observer.curve]
        reached = {**observer.reached, **reached}
    return {
        "curve": curves,
        "seconds_to": {f"{t:.0%}": reached.get(t) for t in TARGETS},
        "best_test_accuracy": max((p["test_accuracy"] for p in curves), default=math.nan),
        "training_seconds": round(clock.seconds(), 1),
    }


def load_profile(args) -> object:
    from image_finetune.config import load_params

    params = load_params(ROOT / "params-gpu.yaml", use_env=False)
    data = {"path": str(args.assets / "data" / DATA_FILE)}
    if not args.dry_run:
        return params.model_copy(update={"data": params.data.model_copy(update=data)})
    ladder = [
        rung.model_copy(update={"batch_size": 8, "epochs": 1}) for rung in params.train.ladder
    ]
    return params.model_copy(
        update={
            "data": params.data.model_copy(update={**data, "max_per_class": 10}),
            "model": params.model.model_copy(update={"image_size": 32}),
            "train": params.train.model_copy(update={"ladder": ladder}),
        }
    )


def with_model(params, backbone: str, weights: Path, **changes):
    """The profile with another backbone (and its weights file)."""
    model = params.model.model_copy(
        update={"backbone": backbone, "weights": str(weights), **changes}
    )
    return params.model_copy(update={"model": model})


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--assets",
        type=Path,
        default=ROOT / ".gpu-check",
        help="folder with data/, weights/ (and wheels/); default .gpu-check",
    )
    parser.add_argument(
        "--backbones",
        nargs="+",
        choices=sorted(WEIGHTS),
        default=["efficientnet_lite0", "mobilenet_v2"],
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=150.0,
        help="training seconds per backbone for the time-to-accuracy runs",
    )
    parser.add_argument("--steps", type=int, default=30, help="timed steps per throughput run")
    parser.add_argument(
        "--dry-run", action="store_true", help="a tiny subset, one step per phase, any device"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    began = time.perf_counter()
    if problems := missing_assets(args.assets, args.backbones):
        print(
            "gpu check cannot start:\n" + "\n".join(f"  - {p}" for p in problems), file=sys.stderr
        )
        return 2
    if problem := accelerator_problem(args.dry_run):
        print(f"gpu check cannot start: {problem}", file=sys.stderr)
        return 2
    import jax
    import keras

    from image_finetune.data.canonical import load_split
    from image_finetune.steps.ingest import ingest_data

    print(f"keras {keras.__version__} on jax {jax.__version__}: {jax.devices()}", flush=True)
    params = load_profile(args)
    sizes = (32,) if args.dry_run else IMAGE_SIZES
    steps, warmup = (1, 1) if args.dry_run else (args.steps, 3)
    figures: dict = {"devices": [str(d) for d in jax.devices()], "backbones": {}}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch:
        work = Path(scratch)
        start = time.perf_counter()
        ingest_data(params, work / "data", ROOT)
        figures["ingest_seconds"] = round(time.perf_counter() - start, 1)
        print(f"ingest: {figures['ingest_seconds']} s", flush=True)
        train, test = load_split(work / "data", "train"), load_split(work / "data", "test")
        n_classes = int(train.labels.max()) + 1
        for backbone in args.backbones:
            weights = args.assets / "weights" / WEIGHTS[backbone]
            row = figures["backbones"][backbone] = {"images_per_second": {}}
            for size in sizes:
                rate = measure_throughput(
                    params, backbone, size, n_classes, train, weights, steps, warmup
                )
                row["images_per_second"][size] = round(rate, 1)
                print(f"{backbone} at {size} px: {rate:,.0f} training images/s", flush=True)
        for backbone in args.backbones:
            print(
                f"{backbone}: time to {' and '.join(f'{t:.0%}' for t in TARGETS)} "
                f"test accuracy (budget {args.budget:.0f} s)",
                flush=True,
            )
            row = figures["backbones"][backbone]
            row.update(
                time_to_accuracy(
                    params,
                    backbone,
                    work / "data",
                    work / "runs",
                    args.assets / "weights" / WEIGHTS[backbone],
                    test,
                    args.budget,
                    1 if args.dry_run else None,
                )
            )
    figures["peak_gpu_memory_gib"] = peak_memory_gib()
    figures["wall_seconds"] = round(time.perf_counter() - began, 1)
    print_table(figures)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


def print_table(figures: dict) -> None:
    sizes = sorted({s for row in figures["backbones"].values() for s in row["images_per_second"]})
    head = [f"img/s @{s}" for s in sizes] + [f"s to {t:.0%}" for t in TARGETS] + ["best test"]
    print("\n| backbone | " + " | ".join(head) + " |")
    print("|" + " --- |" * (len(head) + 1))
    for name, row in figures["backbones"].items():
        cells = [f"{row['images_per_second'][s]:,.0f}" for s in sizes]
        cells += [str(row["seconds_to"][f"{t:.0%}"] or "not reached") for t in TARGETS]
        cells.append(f"{row['best_test_accuracy']:.4f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    memory = figures["peak_gpu_memory_gib"]
    print(
        f"\npeak device memory: {'n/a' if memory is None else f'{memory} GiB'}; ingest "
        f"{figures['ingest_seconds']} s; wall {figures['wall_seconds']} s"
    )


if __name__ == "__main__":
    sys.exit(main())
