#!/usr/bin/env bash
# Benchmark: the default profile end to end (`dvc repro` from nothing, in a fresh copy of
# the project, feature cache empty), then a second `dvc repro` that must be a no-op.
# Prints wall times and the test metrics.
#   bash bench/repro.sh                                   # the default profile
#   bash bench/repro.sh model.backbone=efficientnet_lite0 \
#       model.weights=../shared/weights/efficientnet_lite0_imagenet_torch_layout.npz
# Each argument overrides one params.yaml value (section.key=value, as `image_finetune.pipelines.cli --set`).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
git -C "$root" ls-files -z | (cd "$root" && xargs -0 cp --parents -t "$work")
cd "$work"
git init -q
if (($#)); then
  "$root/.venv/bin/python" - "$@" <<'PY'
import sys

import yaml

from image_finetune.pipelines.cli import apply_override

tree = yaml.safe_load(open("params.yaml"))
for assignment in sys.argv[1:]:
    apply_override(tree, assignment)
yaml.safe_dump(tree, open("params.yaml", "w"), sort_keys=False)
PY
fi
sed -i "s|\.\./shared/|$root/../shared/|g" params.yaml
profile=${*:-default profile}
# The copy's own code, not the checkout's editable install: edits there cannot leak in.
export PATH="$root/.venv/bin:$PATH" PYTHONPATH="$work/src" TF_CPP_MIN_LOG_LEVEL=2
start=$(date +%s.%N)
dvc repro > repro.log 2>&1 || { tail -40 repro.log; exit 1; }
full=$(echo "$(date +%s.%N) - $start" | bc)
start=$(date +%s.%N)
dvc repro > noop.log 2>&1
noop=$(echo "$(date +%s.%N) - $start" | bc)
grep -q "Data and pipelines are up to date" noop.log
printf 'dvc repro (%s), from nothing: %.0f s\n' "$profile" "$full"
printf 'dvc repro, nothing changed (no-op):       %.2f s\n' "$noop"
python - <<'PY'
import json
summary = json.load(open("models/summary.json"))
for a in summary["attempts"]:
    print(f"  attempt {a['index']} {a['rung']:<14} val acc {a['val_accuracy']:.4f}  "
          f"{'passed' if a['passed'] else 'failed'}")
m = json.load(open("reports/evaluation/metrics.json"))
lo, hi = m["accuracy_ci95"]
print(f"test accuracy {m['accuracy']:.4f} (95% CI {lo:.4f}-{hi:.4f}), macro F1 {m['macro_f1']:.4f}, "
      f"ECE {m['ece']:.4f}, batch-1 p50 {m['latency']['batch1_p50_ms']:.1f} ms")
PY
grep -E "^> |rung [0-9]" repro.log | sed 's/^/  /'
