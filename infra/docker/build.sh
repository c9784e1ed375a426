#!/usr/bin/env bash
# Build the project's images and print each one's build time and size.
#   bash infra/docker/build.sh            # the CPU image ($IMAGE_FINETUNE_IMAGE-cpu) and the
#                                         # slim serving image ($IMAGE_FINETUNE_IMAGE-serve)
#   bash infra/docker/build.sh --gpu      # and the GPU image, where its base can be had
#   bash infra/docker/build.sh --serve    # the serving image alone
# Tags follow the image setting the pipeline uses (pipelines/cli.py --image, the k8s
# manifests): IMAGE_FINETUNE_IMAGE, default ghcr.io/image-finetune/image-finetune:0.1.0.
# The CPU image's base is python:3.11-slim-bookworm when a registry serves it; otherwise a
# local Debian base made by base.sh (debootstrap + docker import). BASE_IMAGE forces one.
set -euo pipefail
cd "$(dirname "$0")/../.."
image=${IMAGE_FINETUNE_IMAGE:-ghcr.io/image-finetune/image-finetune:0.1.0}
official_base=python:3.11-slim-bookworm
local_base=image-finetune-base:bookworm

docker info >/dev/null 2>&1 || { echo "build.sh: Docker is not reachable (is dockerd running?)" >&2; exit 2; }

have_image() { docker image inspect "$1" >/dev/null 2>&1; }
pullable() { have_image "$1" || timeout 60 docker pull -q "$1" >/dev/null 2>&1; }

build() {  # dockerfile tag base
  local start=$(date +%s)
  echo "building $2 from $3 ($1)"
  docker build -q -f "$1" --build-arg BASE_IMAGE="$3" -t "$2" . >/dev/null
  local size=$(docker image inspect "$2" --format '{{.Size}}')
  echo "built $2 in $(( $(date +%s) - start )) s: $(( size / 1000000 )) MB"
}

base=${BASE_IMAGE:-}
if [[ -z "$base" ]]; then
  if pullable "$official_base"; then base=$official_base
  else
    echo "no registry serves $official_base: making the local base $local_base"
    bash infra/docker/base.sh "$local_base"
    base=$local_base
  fi
fi
if [[ "${1:-}" == "--serve" ]]; then
  build infra/docker/Dockerfile.serve "$image-serve" "$base"
  exit 0
fi
build infra/docker/Dockerfile.cpu "$image-cpu" "$base"
# The slim serving image (no TensorFlow): the Deployment's and the InferenceService's.
build infra/docker/Dockerfile.serve "$image-serve" "$base"

if [[ "${1:-}" == "--gpu" ]]; then
  gpu_base=${GPU_BASE_IMAGE:-tensorflow/tensorflow:2.21.0-gpu}
  if pullable "$gpu_base"; then
    build infra/docker/Dockerfile.gpu "$image-gpu" "$gpu_base"
  else
    echo "GPU image not built: its base $gpu_base cannot be pulled (GPU_BASE_IMAGE names another)" >&2
    exit 3
  fi
fi
