#!/usr/bin/env bash
# One call on a machine with a CUDA GPU: the GPU tests (the Mamba kernel equivalence test among them), then the
# GPU variants of the performance benchmarks, most important first. Each step gets at most what is left of
# GPU_DEADLINE_S (default 540 s) and a failed step does not stop the next, so a short lease still returns
# everything that finished. Triton compiles mamba_ssm's kernels on their first use in a process, every autotuning
# candidate one after another (on an H100, 2026-11-27, more than 170 s for the kernel test and more than 90 s for
# panfoma-base, so most timed steps ran out of time); warm_mamba_kernels.py therefore compiles them first, in
# parallel processes, into Triton's on-disk cache. Results go to benchmarks/results/*-cuda*.{json,png} and
# mamba-kernels-*.json; the log to $GPU_LOG (default benchmarks/results/gpu-run.log).
# GPU_STEPS="warm tests training cells" runs only the named steps (info warm tests kernels inference training genes
# cells tiny precision loader checkpointing; keep "warm" before any step that uses mamba_ssm's kernels).
#   PANFOMA_DATA_DIR=../shared/data bash benchmarks/run_gpu.sh
set -uo pipefail
cd "$(dirname "$0")/.."
export MPLBACKEND=Agg PYTHONUNBUFFERED=1
# keep Triton's autotuning results on disk: the benchmarks measure each model in a fresh process, and without this
# every process timed every candidate of every kernel again (on the H200, 2026-11-30, bench_inference.py for
# panfoma-base took about 165 s with its kernels already compiled)
export TRITON_CACHE_AUTOTUNING=1
# a failing mamba_ssm kernel must stop a step, not fall back to the PyTorch scan and be timed as "the kernel"
export PANFOMA_MAMBA_KERNELS=require
PY="${PYTHON:-python3}"
DEADLINE=$((SECONDS + ${GPU_DEADLINE_S:-540}))
LOG="${GPU_LOG:-benchmarks/results/gpu-run.log}"
mkdir -p "$(dirname "$LOG")"
# real data for the tests (bf16 vs fp32 embedding) and the end-to-end scripts: the shared folder next to the repo
export PANFOMA_DATA_DIR="${PANFOMA_DATA_DIR:-$(cd .. && pwd)/shared/data}"

step() {  # step NAME MAX_SECONDS command...: run with what is left of the deadline, log its status and time
    local name=$1 max=$2
    shift 2
    if [[ -n "${GPU_STEPS:-}" && " ${GPU_STEPS} " != *" ${name} "* ]]; then
        echo "### SKIPPED (not in GPU_STEPS): ${name}" | tee -a "$LOG"
        return
    fi
    local left=$((DEADLINE - SECONDS))
    local limit=$((max < left ? max : left))
    if ((limit < 5)); then
        echo "### SKIPPED (deadline): $*" | tee -a "$LOG"
        return
    fi
    echo "### [$SECONDS s] $* (at most ${limit} s)" | tee -a "$LOG"
    local start=$SECONDS
    timeout --kill-after=5 "$limit" "$@" 2>&1 | tee -a "$LOG"
    echo "### rc=${PIPESTATUS[0]} after $((SECONDS - start)) s: $*" | tee -a "$LOG"
}

step info 20 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
step info 60 "$PY" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
torch.cuda.get_device_name(), 'triton', triton.__version__)
from panfoma_sc.nn.ssd import mamba_ssm_kernels
print('mamba_ssm Triton scan:', mamba_ssm_kernels())"

# compile mamba_ssm's Triton kernels for the shapes below, in parallel (batches divisible by 16 throughout)
step warm 150 "$PY" benchmarks/warm_mamba_kernels.py --processes 14
step tests 150 "$PY" -m pytest -m gpu -v -p no:cacheprovider tests/nn tests/models tests/tl
# the scan alone: mamba_ssm's Triton kernel against the torch SSD path, one panfoma-base Mamba2 layer
step kernels 60 "$PY" benchmarks/bench_mamba_kernels.py --architecture panfoma-base --dtype bf16 --batch-size 16 \
    --lengths 1024 4096 16384 --repeats 5
# inference: panfoma-base (paper scale, 3072 genes) in bf16 autocast; training step; scaling; then panfoma-tiny
step inference 120 "$PY" benchmarks/bench_inference.py --device cuda --architecture panfoma-base --dtype bf16 --batch-size 64 \
    --cells 512
step training 90 "$PY" benchmarks/bench_training.py --device cuda --architecture panfoma-base --dtype bf16 --batch-size 16
# scaling: 1k..16k genes per cell (16 cells per forward); then 10k / 100k cells streamed from a backed h5ad
step genes 120 "$PY" benchmarks/bench_scaling.py --device cuda --architecture panfoma-base --dtype bf16 \
    --cells-per-batch 16 --repeats 3 --budget-s 15
step cells 180 "$PY" benchmarks/bench_scaling.py --device cuda --architecture panfoma-base --dtype bf16 --genes \
    --cells 10000 100000 --cells-n-genes 1024 --batch-size 256
step tiny 90 "$PY" benchmarks/bench_inference.py --device cuda --architecture panfoma-tiny --dtype bf16 --batch-size 64 \
    --cells 512
# pf.tl.embed: bf16 vs fp32 agreement per cell, and throughput with and without the background loader
step precision 45 "$PY" benchmarks/precision_bf16.py --device cuda --cells 1024
step loader 75 "$PY" benchmarks/bench_loader.py --device cuda --cells 2700 --prefetch 0 1 2 --repeats 2
# fine-tuning with and without activation checkpointing (pf.tl.integrate, pf.tl.annotate finetune)
step checkpointing 120 "$PY" benchmarks/bench_finetune_checkpointing.py --device cuda --rounds 1
ls -la benchmarks/results/ | tee -a "$LOG"
