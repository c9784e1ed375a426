#!/usr/bin/env bash
# Benchmark: two commits' default `dvc repro` from nothing, back to back on this machine,
# each in a fresh clone with an empty feature cache and a local MLflow store. Prints each
# stage's wall time, the whole run's, the ratio and the test accuracy, with the load average
# when each run started (compare only runs made side by side: machines and hours differ).
#   bash bench/repro_pair.sh BASE NEW          # BASE first, then NEW
#   bash bench/repro_pair.sh NEW BASE          # the other order, to see the drift
#   KEEP=/tmp/pairs bash bench/repro_pair.sh BASE NEW   # keep the clones and their logs
#   KEEP=/tmp/pairs REPORT_ONLY=1 bash bench/repro_pair.sh BASE NEW   # their table again
# A commit from before this script existed works: only this checkout's copy of it runs.
set -euo pipefail
(($# == 2)) || { echo "usage: bash bench/repro_pair.sh FIRST_COMMIT SECOND_COMMIT" >&2; exit 2; }
root=$(cd "$(dirname "$0")/.." && pwd)
work=${KEEP:-$(mktemp -d)}
mkdir -p "$work"
[[ -n ${KEEP:-} ]] || trap 'rm -rf "$work"' EXIT

run_one() {  # COMMIT FOLDER: a default `dvc repro` of COMMIT from nothing; timing.log
  local commit=$1 folder=$2
  rm -rf "$folder"
  git clone -q "$root" "$folder"
  git -C "$folder" checkout -q "$commit"
  sed -i "s|\.\./shared/|$root/../shared/|g" "$folder/params.yaml"
  (
    cd "$folder"
    # The clone's own code, not the checkout's editable install; no outside store or cache.
    export PATH="$root/.venv/bin:$PATH" PYTHONPATH="$folder/src" TF_CPP_MIN_LOG_LEVEL=2
    unset MLFLOW_TRACKING_URI IMAGE_FINETUNE_CACHE IMAGE_FINETUNE_ENGINE
    echo "START $(date +%s.%N) $(cut -d' ' -f1 /proc/loadavg)" > timing.log
    dvc repro 2>&1 | while IFS= read -r line; do
      [[ $line == *"Running stage"* ]] && echo "$(date +%s.%N) $line" >> timing.log
      printf '%s\n' "$line"
    done > repro.log
    status=${PIPESTATUS[0]}
    echo "END $(date +%s.%N) $(cut -d' ' -f1 /proc/loadavg) rc=$status" >> timing.log
    ((status == 0)) || { tail -40 repro.log >&2; exit "$status"; }
  )
}

summarise() {  # FOLDER: stage seconds, the whole run, test accuracy (one JSON line)
  "$root/.venv/bin/python" - "$1" <<'PY'
import json
import sys
from pathlib import Path

folder = Path(sys.argv[1])
lines = (folder / "timing.log").read_text().splitlines()
start, load = float(lines[0].split()[1]), lines[0].split()[2]
marks = [
    (float(line.split()[0]), line.split("'")[1]) for line in lines if "Running stage" in line
]
end = float(lines[-1].split()[1])
stages = {
    name: round(nxt - at, 1)
    for (at, name), nxt in zip(marks, [m[0] for m in marks[1:]] + [end], strict=True)
}
accuracy = json.loads((folder / "metrics" / "evaluation.json").read_text())["accuracy"]
print(json.dumps({"total": round(end - start, 1), "load": load, "stages": stages,
                  "test_accuracy": accuracy}))
PY
}

first=$1 second=$2
vnni=$(grep -q avx512_vnni /proc/cpuinfo && echo "AVX-512 VNNI" || echo "no VNNI")
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores," \
  "$vnni; $(date -u '+%F %H:%M') UTC"
for commit in "$first" "$second"; do
  [[ -n ${REPORT_ONLY:-} ]] || run_one "$commit" "$work/$commit"
  summarise "$work/$commit" > "$work/$commit.json"
done
"$root/.venv/bin/python" - "$work/$first.json" "$work/$second.json" "$first" "$second" <<'PY'
import json
import sys

runs = [json.load(open(path)) for path in sys.argv[1:3]]
longer, shorter = sorted(runs, key=lambda run: -len(run["stages"]))
names = list(dict.fromkeys([*longer["stages"], *shorter["stages"]]))  # in run order
print(f"| seconds | {sys.argv[3]} | {sys.argv[4]} |")
print("| --- | ---: | ---: |")
for name in names:
    cells = [str(run["stages"].get(name, "-")) for run in runs]
    print(f"| {name} | {cells[0]} | {cells[1]} |")
print(f"| **whole run** (load at start) | **{runs[0]['total']}** ({runs[0]['load']}) | "
      f"**{runs[1]['total']}** ({runs[1]['load']}) |")
print(f"{sys.argv[4]} / {sys.argv[3]}: {runs[1]['total'] / runs[0]['total']:.3f}x; test accuracy "
      f"{runs[0]['test_accuracy']:.4f} and {runs[1]['test_accuracy']:.4f}")
PY
