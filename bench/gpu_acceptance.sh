#!/usr/bin/env bash
# GPU acceptance in one go (step limits add up to 455 s: < 8 minutes on a lent GPU): the `gpu` tests, engine pairs/s at batch 8/32/64,
# extract-flow end to end vs the engine alone on H.264 input, the non-engine pipeline per core, decoder
# pixel differences, and the two-stream I3D real-time factor. Writes a BENCHMARKS.md-format block to
# stdout and to FILE (default gpu_acceptance.md). Each step has its own time limit; a step that fails
# or runs out of time is reported with its exit code and the script goes on.
#
#   bench/gpu_acceptance.sh [FILE]          # PYTHON=/path/to/python to choose the interpreter
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-gpu_acceptance.md}
PY=${PYTHON:-python}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
START=$SECONDS

step() {  # step TITLE SECONDS COMMAND...
    local title=$1 limit=$2
    shift 2
    printf '\n### %s\n\ncommand: `%s` (limit %ss)\n\n' "$title" "$*" "$limit"
    local t0=$SECONDS
    timeout --kill-after=10 "$limit" "$@" 2>&1 | grep -v -e '^\s*$' -e 'Warning' | tail -n 40
    local rc=${PIPESTATUS[0]}
    printf '\n(exit %s, %ss%s)\n' "$rc" "$((SECONDS - t0))" "$([ "$rc" = 124 ] && echo ', TIMED OUT')"
}

{
    echo "## GPU acceptance ($(date -u '+%Y-%m-%d %H:%M UTC'))"
    echo
    echo "- GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)"
    echo "- CPU: $(nproc) cores; load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
    $PY - <<'PY'
import cv2, numpy, torch
print(f"- versions: torch {torch.__version__} (CUDA {torch.version.cuda}), opencv {cv2.__version__}, "
      f"numpy {numpy.__version__}; cuda available: {torch.cuda.is_available()}")
PY
    step "gpu tests (pytest -m gpu)" 110 $PY -m pytest -q -m gpu -p no:cacheprovider
    step "flow engines, 340x256, batch 8/32/64" 120 \
        $PY bench/flow_engines.py --device cuda --sizes 340x256 --batch-sizes 8,32,64 --pairs 64
    step "extract-flow end to end vs engine alone, H.264 340x256" 60 \
        $PY bench/extract_flow.py --device cuda --batch-size 32 --no-naive --source-codec h264 \
        --frames 257 --rss-frames 50 200
    step "non-engine pipeline per core (null engine)" 50 \
        $PY bench/extract_flow.py --pipeline --frames 150 --decoders pyav opencv torchcodec
    step "decoders vs OpenCV (pixel differences)" 25 $PY bench/decoders.py --frames 60 --size 640x360
    step "two-stream I3D real-time factor" 90 \
        $PY bench/features.py --device cuda --amp bf16 --batch-size 16 --seconds 20 \
        --cases "i3d rgb+flow tvl1 (16f, stride 16)"
    echo
    echo "total: $((SECONDS - START)) s"
} | tee "$OUT"
