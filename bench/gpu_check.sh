#!/usr/bin/env bash
# The one-command GPU check (bench/gpu_check.py): the GPU profile end to end on a machine
# with a GPU and JAX but no TensorFlow and no network.
#   bash bench/gpu_check.sh --prepare     # here: wheels, data and weights into .gpu-check/
#   bash bench/gpu_check.sh               # there: prints images/s, time to 95%/97%, memory
#   bash bench/gpu_check.sh --dry-run     # anywhere: tiny subset, one step per phase
# On the device tool: run(command="bash bench/gpu_check.sh", carry=[".gpu-check"]).
# Environment: GPU_CHECK_ASSETS (default .gpu-check), SHARED (default ../shared, for
# --prepare), GPU_CHECK_PYTHON_VERSION (the device's Python, default 3.12), PYTHON.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
assets=${GPU_CHECK_ASSETS:-$root/.gpu-check}
python=${PYTHON:-python3}
# Keras and the project's own needs that the device's image lacks (versions from the lock).
carried=(keras namex optree pydantic pydantic-core annotated-types typing-inspection
         typing-extensions)

fail() { echo "gpu check: $*" >&2; exit 2; }

locked() {  # name==version, as uv.lock pins it
  "$root/.venv/bin/python" - "$1" "$root/uv.lock" <<'PY'
import sys
import tomllib

name, lock = sys.argv[1].lower(), tomllib.load(open(sys.argv[2], "rb"))
pins = [f"{p['name']}=={p['version']}" for p in lock["package"] if p["name"] == name]
if not pins:
    sys.exit(1)
print(pins[0])
PY
}

prepare() {
  local shared=${SHARED:-$root/../shared} pin
  [[ -d $shared ]] || fail "no $shared to copy the data and weights from (set SHARED)"
  rm -rf "$assets" && mkdir -p "$assets/data" "$assets/weights" "$assets/wheels"
  cp "$shared/data/cifar10-jpeg.tar.gz" "$assets/data/"
  cp "$shared/weights/mobilenet_v2_1.0_imagenet_no_top.weights.h5" \
     "$shared/weights/efficientnet_lite0_imagenet_torch_layout.npz" "$assets/weights/"
  for name in "${carried[@]}"; do
    pin=$(locked "$name") || fail "$name is not in uv.lock"
    "$root/.venv/bin/python" -m pip download -q --no-deps --only-binary=:all: \
      --python-version "${GPU_CHECK_PYTHON_VERSION:-3.12}" --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 -d "$assets/wheels" "$pin"
  done
  du -sh "$assets" "$assets"/*
}

if [[ ${1:-} == --prepare ]]; then
  prepare
  exit
fi
export KERAS_BACKEND=jax PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
if ! "$python" -c 'import keras, pydantic' 2>/dev/null; then
  compgen -G "$assets/wheels/*.whl" > /dev/null \
    || fail "keras/pydantic are not installed and $assets/wheels holds no wheels: run \`bash bench/gpu_check.sh --prepare\` where ../shared is"
  site=$(mktemp -d)
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --target "$site" "$assets"/wheels/*.whl
  export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$root/src${PYTHONPATH:+:$PYTHONPATH}
exec "$python" "$root/bench/gpu_check.py" --assets "$assets" "$@"
