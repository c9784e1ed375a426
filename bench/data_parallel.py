"""Benchmark: training images/s of one rung on one device, on two logical CPU devices in one
process (MirroredStrategy) and on two worker processes on 127.0.0.1 (MultiWorkerMirrored-
Strategy from TF_CONFIG), with the same global batch. Figures only.

Each layout runs ``image-finetune train-rung`` on a canonical dataset (ingested first from
``--source``, real CIFAR-10 JPEGs by default) in fresh processes; images/s is the rung's
``result.json`` figure (epochs x training images / fit seconds, the embedding pass excluded).
On a CPU the devices share the same cores, so the figures show the cost of the strategy
(synchronising gradients every step), not a speed-up: that needs GPUs or nodes.

Usage: python bench/data_parallel.py [--per-class 200] [--mode tail|end_to_end]
       [--epochs 2] [--batch 64] [--image-size 32]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from tests.local_cluster import local_cluster

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
UNFREEZE = {"tail": "block_13_expand", "end_to_end": "block_11_expand"}


def write_params(work: Path, args, distribution: str, host_devices: int) -> Path:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update(path=str(args.source), max_per_class=args.per_class)
    params["model"].update(
        weights=str(SHARED / "weights" / "mobilenet_v2_1.0_imagenet_no_top.weights.h5"),
        image_size=args.image_size,
    )
    params["train"].update(
        distribution=distribution,
        host_devices=host_devices,
        ladder=[
            {
                "name": args.mode,
                "unfreeze_from": UNFREEZE[args.mode],
                "epochs": args.epochs,
                "batch_size": args.batch,
                "learning_rate": 0.0005,
            }
        ],
    )
    path = work / f"params-{distribution}-{host_devices}.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def run_layout(
    work: Path, args, name: str, distribution: str, processes: int, host_devices: int = 1
) -> dict:
    params = write_params(work, args, distribution, host_devices)
    out = work / name
    command = [
        sys.executable,
        "-m",
        "image_finetune.cli",
        "train-rung",
        "--params",
        str(params),
        "--index",
        "0",
        "--data",
        str(work / "data"),
        "--out",
        str(out),
        "--cache",
        str(work / f"cache-{name}"),
    ]
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    clusters = local_cluster(processes) if processes > 1 else [None]
    workers = [
        subprocess.Popen(
            command,
            env={**env, "TF_CPP_MIN_LOG_LEVEL": "2", **({"TF_CONFIG": config} if config else {})},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for config in clusters
    ]
    for worker in workers:
        _, errors = worker.communicate()
        if worker.returncode:
            raise SystemExit(f"{name}: exit {worker.returncode}\n{errors[-3000:]}")
    return json.loads((out / "result.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", type=Path, default=SHARED / "data" / "cifar10-jpeg.tar.gz")
    parser.add_argument("--per-class", type=int, default=200)
    parser.add_argument("--mode", choices=sorted(UNFREEZE), default="tail")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=32)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-data-parallel-"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "image_finetune.cli",
            "ingest",
            "--params",
            str(write_params(work, args, "one_device", 1)),
            "--out",
            str(work / "data"),
        ],
        check=True,
        capture_output=True,
    )
    layouts = [
        ("1 device", "one_device", 1, 1),
        ("2 logical devices", "mirrored", 1, 2),
        ("2 workers", "multi_worker", 2, 1),
    ]
    print(
        "| layout | mode | global batch | images/s | best val. accuracy |\n"
        "|---|---|---:|---:|---:|",
        flush=True,
    )
    for name, distribution, processes, devices in layouts:
        print(f"# {name} ...", file=sys.stderr, flush=True)
        result = run_layout(work, args, distribution, distribution, processes, devices)
        print(
            f"| {name} ({result['distribution']}) | {result['mode']} | "
            f"{result['global_batch']} | {result['images_per_second']:.0f} | "
            f"{result['best_val_accuracy']:.4f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
