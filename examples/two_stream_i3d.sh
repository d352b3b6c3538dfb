#!/usr/bin/env bash
# Two-stream I3D features the way the Kinetics I3D paper prepares its inputs: 25 fps, RGB short side 256 with a
# 224 centre crop in [-1, 1], TV-L1 flow (flowkit's batched engine) clipped to +-20 and scaled to [-1, 1].
# 16-frame windows every 16 frames, RGB and flow stored apart and concatenated (RGB first), ActionFormer style.
#
# Usage: examples/two_stream_i3d.sh VIDEOS OUT RGB_CKPT FLOW_CKPT
#   RGB_CKPT / FLOW_CKPT: piergiaj rgb_imagenet.pt / flow_imagenet.pt (or video_features model_{rgb,flow}.pth),
#   downloaded beforehand: flowkit never downloads anything.
set -euo pipefail
videos=$1 out=$2 rgb=$3 flow=$4
flowkit features "$videos" -o "$out" --model i3d --stream both --weights "$rgb" --flow-weights "$flow" \
  --fps 25 --clip-len 16 --stride 16 --combine concat --dtype float16 \
  --device "${FLOWKIT_DEVICES:-auto}" --batch-size 16
flowkit status "$out"
python3 "$(dirname "$0")/read_features.py" "$out" | head -20
