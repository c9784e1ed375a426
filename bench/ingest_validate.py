"""Benchmark: ingest the 60,000 real CIFAR-10 JPEGs, then validate them.

Prints seconds, images/s and peak memory for each step.
Usage: python bench/ingest_validate.py [--source ../shared/data/cifar10-jpeg.tar.gz]
"""

from __future__ import annotations

import argparse
import logging
import resource
import tempfile
import time
from pathlib import Path

from image_finetune.config import Params
from image_finetune.steps.ingest import ingest_data
from image_finetune.steps.validate import validate_data

ROOT = Path(__file__).resolve().parents[1]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--source", type=Path, default=ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as work:
        data = Path(work) / "data"
        start = time.perf_counter()
        params = Params(data={"path": str(args.source)})
        manifest = ingest_data(params, data, ROOT)
        seconds = time.perf_counter() - start
        total = sum(s["count"] for s in manifest["splits"].values())
        print(
            f"ingest:   {seconds:6.1f} s  {total / seconds:8.0f} images/s  "
            f"({total} images, peak RSS {peak_rss_mb():.0f} MB)"
        )
        start = time.perf_counter()
        report = validate_data(params, data, Path(work) / "report")
        seconds = time.perf_counter() - start
        print(
            f"validate: {seconds:6.1f} s  {total / seconds:8.0f} images/s  "
            f"({report.evaluated} expectations, success={report.success}, "
            f"peak RSS {peak_rss_mb():.0f} MB)"
        )


if __name__ == "__main__":
    main()
