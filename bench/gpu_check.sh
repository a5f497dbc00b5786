#!/usr/bin/env bash
# The GPU checks of the engine issue, as one prepared script (about 8 minutes on one H200):
#   bash bench/gpu_check.sh            # writes bench/results/gpu/*.txt, or $OUT/*.txt where $OUT is set
#   ENGINE_ROWS=gd20_chunked,ig50 bash bench/gpu_check.sh engine compile    # some parts only
# 1. bench_engine.py at the paper's sizes on the GPU: matmul peaks (fp32, bf16), then per task the
#    paper's GD-20 (decoder whole, and in analyze's own chunks), FISTA-7, early stop, the unbatched
#    reference, Captum IG-50 and bf16 (each row's figures printed and saved as soon as it is measured);
#    torch.compile last, per task on its own limit (the lung's compile outlasted 300 s on an H200).
# 2. bf16_equivalence.py: fp32 against bf16 maps of the shipped bundles (Pearson, same peak).
# 3. gpu_train_check.py: Algorithm 1's training throughput (volumes per second per GPU, bf16).
# Record the tables in docs/analyze.md ("On a GPU"). Needs the CUDA build of torch, MONAI, Captum,
# SimpleITK, slicerio and pynrrd (the lung generator); where the GPU machine lacks them, put their wheels in
# .whl/ first (here: pip download --no-deps --only-binary=:all: --python-version 3.12 --platform
# manylinux2014_x86_64 -d .whl monai==1.6.1 captum==0.9.0 SimpleITK slicerio==1.4.0 pynrrd); they are
# installed into /tmp/site.
set -u
cd "$(dirname "$0")/.."
out="${OUT:-bench/results/gpu}"
mkdir -p "$out"
export PYTHONPATH=.
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=.:/tmp/site
fi
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU visible'" || exit 2
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch, monai, captum, SimpleITK, slicerio, nrrd; print('torch', torch.__version__, 'monai', monai.__version__, 'captum', captum.__version__)" | tee -a "$out/gpu.txt"
parts="${*:-engine bf16 train compile}"
rows="${ENGINE_ROWS:-gd20,gd20_chunked,fista,early,early_fista,reference,ig50,bf16}"
has() { case " $parts " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
if has engine; then
    for task in lung brain; do
        timeout 150 python3 bench/bench_engine.py --device cuda --tasks $task --rows $rows \
            --json "$out/engine_$task.json" > "$out/engine_$task.txt" 2>&1
        cat "$out/engine_$task.txt"
    done
fi
has bf16 && timeout 100 python3 bench/bf16_equivalence.py --device cuda --n 12 2>&1 | tee "$out/bf16.txt"
has train && timeout 90 python3 bench/gpu_train_check.py --steps 50 2>&1 | tee "$out/train.txt"
if has compile; then            # brain first: the lung's ResNet-50 compiles for minutes
    for task in brain lung; do
        timeout "${COMPILE_LIMIT:-150}" python3 bench/bench_engine.py --device cuda --tasks $task --rows compile \
            --no-flops --json "$out/engine_compile_$task.json" > "$out/engine_compile_$task.txt" 2>&1
        cat "$out/engine_compile_$task.txt"
    done
fi
