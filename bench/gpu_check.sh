#!/usr/bin/env bash
# The GPU checks of the engine issue, as one prepared script (about 8 minutes on one H200):
#   bash bench/gpu_check.sh            # writes bench/results/gpu/*.txt, or $OUT/*.txt where $OUT is set
# 1. bench_engine.py at the paper's sizes on the GPU: matmul peaks (fp32, bf16), then per task the
#    paper's GD-20, FISTA-7, early stop, bf16, torch.compile, the unbatched reference and Captum IG-50.
# 2. bf16_equivalence.py: fp32 against bf16 maps of the shipped bundles (Pearson, same peak).
# 3. gpu_train_check.py: Algorithm 1's training throughput (volumes per second per GPU, bf16).
# Record the tables in docs/analyze.md ("On a GPU"). Needs the CUDA build of torch.
set -u
cd "$(dirname "$0")/.."
out="${OUT:-bench/results/gpu}"
mkdir -p "$out"
export PYTHONPATH=.
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU visible'" || exit 2
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
timeout 300 python bench/bench_engine.py --device cuda --tasks lung,brain \
    --rows gd20,fista,early,early_fista,bf16,compile,reference,ig50 --json "$out/engine.json" \
    2>&1 | tee "$out/engine.txt"
timeout 120 python bench/bf16_equivalence.py --device cuda --n 12 2>&1 | tee "$out/bf16.txt"
timeout 120 python bench/gpu_train_check.py --steps 100 2>&1 | tee "$out/train.txt"
