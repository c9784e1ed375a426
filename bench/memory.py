"""Benchmark: peak memory of ingest, validate, one training epoch and evaluation as the data
grows tenfold (figures only, nothing asserted).

Each step runs in a fresh Python process, on real CIFAR-10 JPEGs ingested with
``data.shard_size``; its peak resident memory is the child's ``ru_maxrss`` (``os.wait4``)
and the peak of its anonymous part (``RssAnon``, sampled: mapped files' pages excluded),
its time the child's wall clock, imports included. Sizes are total images over all splits:
60,000 is the whole dataset; a smaller size caps each class with ``data.max_per_class``
(6,000 = 300 per class of train and test). The training step is one epoch of the
frozen-head rung (``head_solver: adam``) on cached features: the embedding pass that fills
the feature cache is part of it. Evaluation runs the model that step trained on the test
split. A ``floor`` row is a process that only imports what the steps import.

Usage: python bench/memory.py [--sizes 6000 60000] [--shard-size 5000] [--image-size 32]
       [--flip-cache] [--work DIR] [--source ../shared/data/cifar10-jpeg.tar.gz]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("floor", "ingest", "validate", "train-epoch", "evaluate")
CIFAR_PER_CLASS = {"train": 5000, "test": 1000}


def per_class_cap(total: int) -> int | None:
    """The data.max_per_class that gives ``total`` images over train and test (None: all)."""
    full = 10 * sum(CIFAR_PER_CLASS.values())
    if total >= full:
        return None
    if total > 10 * 2 * CIFAR_PER_CLASS["test"]:
        raise SystemExit(f"--sizes {total}: choose at most 20,000 or the whole 60,000")
    return total // 20


def bench_params(args: argparse.Namespace, total: int) -> dict:
    """The params overrides of a run: small model input, one cheap epoch, few latency runs."""
    sharding = {"shard_size": args.shard_size} if args.shard_size else {}
    return {
        "data": {
            "path": str(args.source),
            "source": "folder",
            "max_per_class": per_class_cap(total),
            **sharding,
        },
        "model": {"image_size": args.image_size},
        "train": {
            "flip_cache": args.flip_cache,
            "ladder": [
                {
                    "name": "frozen-head",
                    "epochs": 1,
                    "batch_size": 256,
                    "head_solver": "adam",
                    "learning_rate": 0.001,
                }
            ],
        },
        "evaluate": {"latency_runs": 3, "bootstrap_samples": 200},
    }


def run_step(step: str, overrides: dict, work: Path) -> None:
    """One step, in this (child) process."""
    import logging

    from image_finetune.config import Params

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    params = Params(**overrides)
    data = work / "data"
    if step == "floor":
        import keras  # noqa: F401  (what the training and evaluation steps load)

        from image_finetune.steps import evaluate, ingest, train_rung, validate  # noqa: F401
    elif step == "ingest":
        from image_finetune.steps.ingest import ingest_data

        ingest_data(params, data, ROOT)
    elif step == "validate":
        from image_finetune.steps.validate import validate_data

        validate_data(params, data, work / "validation")
    elif step == "train-epoch":
        from image_finetune.steps.train_rung import train_rung

        train_rung(params, 0, data, work / "attempt", work / "cache", ROOT)
    elif step == "evaluate":
        from image_finetune.steps.evaluate import evaluate_classifier

        evaluate_classifier(params, data, work / "attempt" / "model.keras", work / "evaluation")


def anonymous_kib(pid: int) -> int:
    """The process's anonymous resident memory (heap and stacks, not mapped files), in KiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def measure(step: str, overrides: dict, work: Path) -> tuple[float, float, float, int]:
    """(peak RSS MiB, peak anonymous RSS MiB, seconds, exit status) of ``step`` in a fresh
    process; its log goes to ``work/<step>.log``. RSS counts the pages of memory-mapped files
    a step reads (reclaimable page cache); the anonymous part, sampled every 0.1 s, is the
    memory the step itself holds."""
    command = [
        sys.executable,
        __file__,
        "--child",
        step,
        "--overrides",
        json.dumps(overrides),
        "--work",
        str(work),
    ]
    start = time.perf_counter()
    anonymous = 0
    with (work / f"{step}.log").open("w") as log:
        child = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        )
        while True:  # this child's own usage, not all children's
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                break
            anonymous = max(anonymous, anonymous_kib(child.pid))
            time.sleep(0.1)
    return (
        usage.ru_maxrss / 1024,
        anonymous / 1024,
        time.perf_counter() - start,
        os.waitstatus_to_exitcode(status),
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=[6000, 60000],
        help="total images (train + test); 60000: all of CIFAR-10",
    )
    parser.add_argument(
        "--shard-size",
        type=int,
        default=5000,
        help="data.shard_size (0: one file per split, the default format)",
    )
    parser.add_argument("--image-size", type=int, default=32, help="model.image_size")
    parser.add_argument(
        "--flip-cache", action="store_true", help="train.flip_cache on (embeds mirrored copies too)"
    )
    parser.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS))
    parser.add_argument(
        "--source", type=Path, default=ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
    )
    parser.add_argument("--work", type=Path, help="keep the runs here (default: a temp dir)")
    parser.add_argument("--child", choices=STEPS, help=argparse.SUPPRESS)
    parser.add_argument("--overrides", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_step(args.child, json.loads(args.overrides), args.work)
        return
    if not args.source.exists():
        raise SystemExit(f"{args.source}: no CIFAR-10 JPEG tarball (see ../shared/README.md)")
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as scratch:
        rows = run_all(args, args.work or Path(scratch))
    print_table(rows, args)


def run_all(args: argparse.Namespace, work_root: Path) -> list[tuple]:
    rows = []
    for total in args.sizes:
        work = work_root / f"n{total}"
        work.mkdir(parents=True, exist_ok=True)
        for step in args.steps:
            print(
                f"[{time.strftime('%H:%M:%S')}] {total} images: {step} ...",
                file=sys.stderr,
                flush=True,
            )
            peak, anonymous, seconds, status = measure(step, bench_params(args, total), work)
            print(
                f"[{time.strftime('%H:%M:%S')}]   peak RSS {peak:.0f} MiB (anonymous "
                f"{anonymous:.0f}), {seconds:.1f} s"
                + (f", FAILED ({status}): see {work / step}.log" if status else ""),
                file=sys.stderr,
                flush=True,
            )
            rows.append((step, total, peak, anonymous, seconds, status))
    return rows


def print_table(rows: list[tuple], args: argparse.Namespace) -> None:
    print(
        f"\nshard_size {args.shard_size}, model.image_size {args.image_size}, "
        f"flip_cache {args.flip_cache}\n"
    )
    print("| step | images | peak RSS MiB | of it anonymous (sampled) MiB | seconds |")
    print("|---|---:|---:|---:|---:|")
    for step, total, peak, anonymous, seconds, status in rows:
        note = f" (failed, exit {status})" if status else ""
        print(f"| {step}{note} | {total:,} | {peak:.0f} | {anonymous:.0f} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
