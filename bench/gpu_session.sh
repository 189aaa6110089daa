#!/usr/bin/env bash
# The H200 verification of docs/gpu-verification.md, in steps that each fit one device call:
#   bash bench/gpu_session.sh STEP OUT_DIR
# STEP: verify (thread slots: digits jobs vs Paddle CPU, GPU-decode checks), fleet (workers, digits
#       and ResNet50 jobs on GPU FP32/FP16 vs CPU, GPU-decode checks),
#       bench-photo / bench-small / bench-pillow (trtbatch bench ResNet50 FP16 bs128: thread and process
#       slots, GPU decode on and off, Ray Data beside it), bench-fp32, bench-decoders (thread slots with
#       1-3 GPU decoders per process, prefetch 1 and 2), bench-steady (16,384 and 65,536 images),
#       bench-backends (nvImageCodec's hardware and hybrid JPEG backends), bench-gil (py-spy's GIL
#       profile of the worker, GIL switch intervals), bench-slots (the defaults, 16k and 65k images; 5, 6 slots), probe (bench/gpu_decode_probe.py, its parts in
#       PROBE_PARTS; after a bench step, which makes the FP16 model), kill (two workers on the one GPU,
#       one SIGKILLed mid-job).
# Before the first step: the onnxruntime-gpu bundle in /tmp/parts, wheels in /tmp/whl, the models
# (ONNX forms made by `trtbatch convert` on a Paddle node: model.toml + model.onnx) in /tmp/m.
set -uo pipefail
step=${1:?step}
out=${2:?out dir}
mkdir -p "$out"
[ -n "${TRTBATCH_REDIS_URL:-}" ] || source scripts/gpu_ort_env.sh /tmp/whl >"$out/env-$step.txt" 2>&1 \
  || { cat "$out/env-$step.txt"; exit 1; }
tb() { python3 -m cli "$@"; }
log() { echo "== $(date +%T) $*"; }

start_worker() {  # NAME DEVICE SLOTS [more worker args]
  local name=$1 device=$2 slots=$3
  shift 3
  setsid python3 -m cli worker --device "$device" --slots "$slots" --name "$name" "$@" \
    >"$out/worker-$name.log" 2>&1 &
  local pid=$!
  for _ in $(seq 120); do
    tb workers --json 2>/dev/null | grep -q "\"$name\"" && return 0
    kill -0 $pid 2>/dev/null || break
    grep -q "exited with" "$out/worker-$name.log" && break
    sleep 1
  done
  echo "worker $name did not start" >&2
  tail -30 "$out/worker-$name.log" >&2
  return 1
}

stop_workers() { pkill -TERM -f "[m] cli worker"; sleep 3; pkill -KILL -f "[m] cli worker"; sleep 1; }  # [m]: not this shell

job_of() { python3 -c "import json,sys; print(json.load(sys.stdin)['job_id'])"; }

submit_json() {  # OUT_NAME ARGS...: submit --wait --json, keep the JSON, print the job id
  local name=$1
  shift
  tb submit --wait --json "$@" >"$out/$name.json" 2>"$out/$name.err"
  job_of <"$out/$name.json"
}

models() {
  if ! tb models list 2>/dev/null | grep -q '^resnet50 '; then
    mkdir -p /tmp/m/resnet50
    [ -f /tmp/m/resnet50/model.onnx ] || cat /tmp/m/r50.* >/tmp/m/resnet50/model.onnx
    tb models add /tmp/m/resnet50 --name resnet50 --max-batch-size 256
    tb models add /tmp/m/digits --name digits
  fi
}

fleet() {
  nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv >"$out/gpu.csv"
  models
  start_worker gpu0 gpu:0 4 || return 1
  start_worker cpuref cpu 1 --threads 8 || return 1
  tb workers --json >"$out/workers.json"
  log convert
  tb convert -m resnet50 --wait --json >"$out/convert-resnet50.json" 2>&1
  tb convert -m digits --wait --json >"$out/convert-digits.json" 2>&1
  local d=/tmp/m/digits-jpg/labels.csv
  log digits
  g32=$(submit_json digits-gpu-fp32 -m digits -e onnxruntime --backend gpu -p fp32 --raw-outputs "$d")
  g16=$(submit_json digits-gpu-fp16 -m digits -e onnxruntime --backend gpu -p fp16 --raw-outputs "$d")
  c32=$(submit_json digits-cpu-fp32 -m digits -e onnxruntime --backend cpu -p fp32 --raw-outputs "$d")
  local cmp="$out/compare.jsonl"
  python3 bench/compare_jobs.py "$g32" "$c32" --label "digits GPU FP32 vs CPU FP32 (ORT CPU EP)" --output "$cmp"
  python3 bench/compare_jobs.py "$g16" "$c32" --label "digits GPU FP16 vs CPU FP32 (ORT CPU EP)" --output "$cmp"
  python3 bench/compare_jobs.py "$g32" --reference-file /tmp/m/digits-ref-paddle-cpu.jsonl \
    --label "digits GPU FP32 vs Paddle CPU FP32 (dev machine)" --output "$cmp"
  python3 bench/compare_jobs.py "$g16" --reference-file /tmp/m/digits-ref-paddle-cpu.jsonl \
    --label "digits GPU FP16 vs Paddle CPU FP32 (dev machine)" --output "$cmp"
  log resnet50
  python3 -c "from pathlib import Path; from bench.support import image_folder as f
print(f(Path('/tmp/img'), 512, '500x375')); print(f(Path('/tmp/img'), 64, '1600x1200'))"
  local photos=/tmp/img/jpeg-500x375-512
  r32=$(submit_json r50-gpu-fp32 -m resnet50 -e onnxruntime --backend gpu -p fp32 -b 128 --raw-outputs $photos)
  r16=$(submit_json r50-gpu-fp16 -m resnet50 -e onnxruntime --backend gpu -p fp16 -b 128 --raw-outputs $photos)
  rc=$(submit_json r50-cpu-fp32 -m resnet50 -e onnxruntime --backend cpu -p fp32 -b 16 --raw-outputs $photos)
  python3 bench/compare_jobs.py "$r32" "$rc" --label "ResNet50 GPU FP32 vs CPU FP32 (ORT CPU EP)" --output "$cmp"
  python3 bench/compare_jobs.py "$r16" "$rc" --label "ResNet50 GPU FP16 vs CPU FP32 (ORT CPU EP)" --output "$cmp"
  stop_workers
  log gpu decode checks
  local chk="$out/gpu-decode-check.jsonl"
  python3 bench/gpu_decode_check.py --model digits --images /tmp/m/digits-jpg --output "$chk"
  python3 bench/gpu_decode_check.py --model resnet50 --images $photos --output "$chk"
  python3 bench/gpu_decode_check.py --model resnet50 --images /tmp/img/jpeg-1600x1200-64 --batch-size 64 \
    --output "$chk"
}

verify() {  # a worker with thread slots: digits vs Paddle CPU, the GPU-decode checks
  nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv >"$out/gpu.csv"
  models
  TRTBATCH_SLOT_POOL=threads start_worker gpu0 gpu:0 4 || return 1
  tb workers --json >"$out/workers.json"
  log convert
  tb convert -m resnet50 --wait --json >"$out/convert-resnet50.json" 2>&1
  tb convert -m digits --wait --json >"$out/convert-digits.json" 2>&1
  local d=/tmp/m/digits-jpg/labels.csv cmp="$out/compare.jsonl"
  g32=$(submit_json digits-gpu-fp32 -m digits -e onnxruntime --backend gpu -p fp32 --raw-outputs "$d")
  g16=$(submit_json digits-gpu-fp16 -m digits -e onnxruntime --backend gpu -p fp16 --raw-outputs "$d")
  python3 bench/compare_jobs.py "$g32" --reference-file /tmp/m/digits-ref-paddle-cpu.jsonl \
    --label "digits GPU FP32 (thread slots) vs Paddle CPU FP32 (dev machine)" --output "$cmp"
  python3 bench/compare_jobs.py "$g16" --reference-file /tmp/m/digits-ref-paddle-cpu.jsonl \
    --label "digits GPU FP16 (thread slots) vs Paddle CPU FP32 (dev machine)" --output "$cmp"
  stop_workers
  log gpu decode checks
  python3 -c "from pathlib import Path; from bench.support import image_folder as f
print(f(Path('/tmp/img'), 512, '500x375')); print(f(Path('/tmp/img'), 64, '1600x1200'))"
  local chk="$out/gpu-decode-check.jsonl"
  python3 bench/gpu_decode_check.py --model digits --images /tmp/m/digits-jpg --output "$chk"
  python3 bench/gpu_decode_check.py --model resnet50 --images /tmp/img/jpeg-500x375-512 --output "$chk"
  python3 bench/gpu_decode_check.py --model resnet50 --images /tmp/img/jpeg-1600x1200-64 --batch-size 64 \
    --output "$chk"
  cut -c1-400 "$chk"
}

probe() {  # where the GPU decoder's time goes beside inference: bench/gpu_decode_probe.py, parts PROBE_PARTS
  models
  python3 -c "from pathlib import Path; from bench.support import image_folder as f; print(f(Path('/tmp/img'), 512, '500x375'))"
  # the FP16 form of ResNet50 the worker runs (made by an earlier bench step): the smallest model.onnx of
  # 3x224x224 (no INT8 form is made by these steps)
  local model
  model=$(python3 - <<'EOP'
import glob, os
import onnxruntime as ort
found = []
for p in glob.glob("/tmp/tb/**/model.onnx", recursive=True):
    shape = ort.InferenceSession(p, providers=["CPUExecutionProvider"]).get_inputs()[0].shape
    if list(shape)[1:] == [3, 224, 224]:
        found.append((os.path.getsize(p), p))
print(min(found)[1] if found else "")
EOP
)
  [ -n "$model" ] || { echo "no ResNet50 ONNX form under /tmp/tb: run a bench step first" >&2; return 1; }
  echo "model: $model ($(du -h "$model" | cut -f1))"
  python3 bench/gpu_decode_probe.py --images /tmp/img/jpeg-500x375-512 --model "$model" \
    --parts "${PROBE_PARTS:-basic}" --jpeg-backend "${JPEG_BACKEND:-hybrid}" 2>&1 | grep -v "nvjpeg2k\|nvtiff\|nvJPEG2000\|nvTIFF\|Note:\|plugin EP" \
    | tee -a "$out/probe.txt"
}

bench() {  # IMAGE_SIZE GPU_DECODE PRECISION PEER [SLOT_POOL [SLOTS [GPU_DECODERS]]]
  # env: IMAGES, PREFETCH, JPEG_BACKEND; PY_SPY=1 (py-spy's GIL profile of the worker, spy-*.txt);
  # SWITCH_MS (thread slots: the worker's GIL switch interval, default 1)
  models
  local name="$1-$2-$3-${5:-auto}-${6:-4}-${7:-2}-p${PREFETCH:-1}-${JPEG_BACKEND:-hybrid}-s${SWITCH_MS:-1}"
  tb bench -m resnet50 -e onnxruntime -p "$3" -b 128 -d gpu:0 -t 16 --slots "${6:-4}" --slot-pool "${5:-auto}" \
    --gpu-decoders "${7:-2}" --prefetch-multiplier "${PREFETCH:-1}" --gil-switch-interval-ms "${SWITCH_MS:-1}" --jpeg-backend "${JPEG_BACKEND:-hybrid}" \
    --image-size "$1" --gpu-decode "$2" --peer "$4" --peer-images 8192 -n "${IMAGES:-16384}" --naive-images 0 --bare-seconds 5 \
    --timeline "$out/timeline.jsonl" ${PY_SPY:+--py-spy "$out/spy-$name.txt"} -o "$out/bench.jsonl" \
    >"$out/bench-$name.log" 2>&1 || tail -30 "$out/bench-$name.log"
  [ -z "${PY_SPY:-}" ] || [ ! -f "$out/spy-$name.txt" ] || python3 bench/gil_summary.py "$out/spy-$name.txt" --top 30 \
    --seconds "$(tail -1 "$out/bench.jsonl" | python3 -c 'import json,sys; print(json.load(sys.stdin)["py_spy"]["seconds"])')" \
    >"$out/gil-$name.json"
  tail -1 "$out/bench.jsonl" | cut -c1-1500
}

kill_test() {
  models
  start_worker gpuA gpu:0 2 || return 1
  start_worker gpuB gpu:0 2 || return 1
  python3 bench/gpu_kill.py --images 20000 --kill gpuA --output "$out/kill.json"
  stop_workers
}

case $step in
  fleet) fleet ;;
  verify) verify ;;
  probe) probe ;;
  bench-photo) bench 500x375 on fp16 ray threads 4; bench 500x375 on fp16 none threads 6 ;;
  bench-small) bench 256 on fp16 ray threads; bench 256 off fp16 none threads ;;
  bench-pillow) bench 500x375 off fp16 none threads ;;
  bench-processes) bench 500x375 on fp16 none processes; bench 500x375 off fp16 none processes ;;
  bench-fp32) bench 500x375 on fp32 none threads ;;
  bench-decoders)  # 4 thread slots with 1, 2 and 3 GPU decoders per process; prefetch 2 with 4 and 6 slots
    for n in 1 2 3; do bench 500x375 on fp16 none threads 4 $n; done
    PREFETCH=2 bench 500x375 on fp16 none threads 4 3; PREFETCH=2 bench 500x375 on fp16 none threads 6 3 ;;
  bench-gil)  # where the GIL goes: 4 thread slots, 2 decoders, with py-spy; GIL switch interval 5, 1 and 0.5 ms
    SWITCH_MS=5 PY_SPY=1 bench 500x375 on fp16 none threads 4 2
    SWITCH_MS=1 bench 500x375 on fp16 none threads 4 2
    SWITCH_MS=0.5 bench 500x375 on fp16 none threads 4 2
    PREFETCH=2 SWITCH_MS=1 bench 500x375 on fp16 none threads 6 2 ;;
  bench-slots)  # the defaults (4 thread slots, 2 decoders, GIL switch 1 ms) on 16,384 and 65,536 images; 5 slots
    # with 2 decoders, 6 with 3
    bench 500x375 on fp16 none threads 4 2; IMAGES=65536 bench 500x375 on fp16 none threads 4 2
    bench 500x375 on fp16 none threads 5 2; bench 500x375 on fp16 none threads 6 3 ;;
  bench-steady)  # thread slots: a job of 16,384 and one of 65,536 images; process slots
    bench 500x375 on fp16 none threads 4; IMAGES=65536 bench 500x375 on fp16 none threads 4
    IMAGES=65536 bench 500x375 on fp16 none processes 4 ;;
  bench-backends)  # thread slots: nvImageCodec's hybrid and hardware-first JPEG backends
    bench 500x375 on fp16 none threads 4; JPEG_BACKEND=hardware bench 500x375 on fp16 none threads 4 ;;
  kill) kill_test ;;
  *) echo "unknown step $step" >&2; exit 2 ;;
esac
