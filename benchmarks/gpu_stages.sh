#!/usr/bin/env bash
# Prepared GPU check of the stage benchmark (run from the repository root on a CUDA machine):
# every stage's unit of work at the CUB 14 x 14 x 2048 layout, ours in fp32 and in bf16 autocast,
# against the published procedure (fp32, as published), with the GPU's own fp32 / bf16 matmul
# peak measured in the same run. Results go to $OUT (default /tmp/gpu_stages).
set -uo pipefail
OUT=${OUT:-/tmp/gpu_stages}
mkdir -p "$OUT"
export PYTHONPATH="$PWD:${PYTHONPATH:-}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 MPLBACKEND=Agg
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
for mp in no bf16; do
  echo "== stage units, 14x14x2048, ours with mixed_precision=$mp"
  python3 benchmarks/bench_stages.py --layout cub14 --images 1000 --device cuda --matmul_size 8192 \
      --repeats 10 --cache_dir "$OUT/cache" --train_args --mixed_precision "$mp" 2>&1 \
      | grep -v "it/s\|img/s" | tee "$OUT/stages_$mp.txt"
done
