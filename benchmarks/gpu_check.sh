#!/usr/bin/env bash
# One prepared GPU check (run from the repository root on a CUDA machine):
#   1. parameter counts and forward time at CUB sizes on the GPU (bench_model.py);
#   2. the whole synthetic pipeline in fp32, bf16 and fp16 mixed precision, with stage times.
# Results go to $OUT (default /tmp/gpu_check).
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export PYTHONPATH="$PWD:${PYTHONPATH:-}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 MPLBACKEND=Agg
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, accelerate, pyarrow; print('torch', torch.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__, 'pyarrow', pyarrow.__version__, torch.cuda.get_device_name())"
python3 benchmarks/bench_model.py --device cuda --repeats 20 2>&1 | tee "$OUT/bench_model.txt"
for mp in no bf16 fp16; do
  echo "== synthetic pipeline, mixed_precision=$mp"
  start=$(date +%s)
  python3 examples/train_stages.py --output_dir "$OUT/run_$mp" --cache_dir "$OUT/cache" \
      --mixed_precision "$mp" --plots false --log_with none > "$OUT/run_$mp.log" 2>&1
  echo "exit $? after $(python3 -c "import time; print(round(time.time() - $start, 1))") s"
  grep -v "it/s\|s/it" "$OUT/run_$mp.log" | tail -9
done
