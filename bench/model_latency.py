"""Benchmark: the served model alone (no HTTP), batch by batch, as the serving benchmark's
ceiling. Prints ms per call and images/s at batch 1, 8, 32 and 256.

Usage: python bench/model_latency.py [--model models/selected/model.keras]
(without one: the default profile's architecture, as bench/serve_load.py builds it)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import ROOT, default_profile_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=ROOT / "models/selected/model.keras")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from image_finetune.inference import load_classifier

    with tempfile.TemporaryDirectory() as work:
        path = (
            args.model if args.model.exists() else default_profile_model(Path(work) / "model.keras")
        )
        model = load_classifier(path)
    print(
        f"model {path.name if path == args.model else '(default profile architecture)'}; "
        f"load before: {os.getloadavg()[0]:.2f}"
    )
    print(f"{'batch':>5} {'ms/call':>8} {'images/s':>9}")
    for batch in (1, 8, 32, 256):
        images = np.zeros((batch, *model.input_shape[1:]), np.uint8)
        for _ in range(3):  # tracing
            model.predict_on_batch(images)
        calls = max(3, 300 // batch)
        start = time.perf_counter()
        for _ in range(calls):
            model.predict_on_batch(images)
        seconds = (time.perf_counter() - start) / calls
        print(f"{batch:>5} {seconds * 1000:>8.1f} {batch / seconds:>9.0f}", flush=True)


if __name__ == "__main__":
    main()
