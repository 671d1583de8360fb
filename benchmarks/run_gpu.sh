#!/usr/bin/env bash
# One call on a machine with a CUDA GPU: the GPU tests, then the GPU variants of the performance benchmarks.
# Results go to benchmarks/results/*-cuda.{json,png}; about 6-9 minutes on one H100.
#   bash benchmarks/run_gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export MPLBACKEND=Agg
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
python -c "import mamba_ssm; print('mamba_ssm', mamba_ssm.__version__)" || echo "mamba_ssm not importable: torch SSD path"

# real data for the tests (bf16 vs fp32 embedding) and the end-to-end scripts: the shared folder next to the repo
export PANFOMA_DATA_DIR="${PANFOMA_DATA_DIR:-$(cd .. && pwd)/shared/data}"

python -m pytest -m gpu -q -p no:cacheprovider tests/nn tests/models tests/tl

# pf.tl.embed: bf16 vs fp32 agreement per cell, and throughput with and without the background loader
python benchmarks/precision_bf16.py --device cuda --cells 1024
python benchmarks/bench_loader.py --device cuda --cells 2700 --prefetch 0 1 2

# inference: panfoma-base (paper scale, 3072 genes) in bf16 autocast, and tiny for comparison with the CPU numbers
python benchmarks/bench_inference.py --device cuda --architecture panfoma-base --dtype bf16 --batch-size 64 --cells 512
python benchmarks/bench_inference.py --device cuda --architecture panfoma-tiny --dtype bf16 --batch-size 64 --cells 512
# scaling: 1k..16k genes per cell (8 cells per forward), and 10k / 100k cells streamed from a backed h5ad
python benchmarks/bench_scaling.py --device cuda --architecture panfoma-base --dtype bf16 --cells-per-batch 8 \
  --budget-s 30 --cells 10000 100000 --cells-n-genes 1024 --batch-size 256
python benchmarks/bench_training.py --device cuda --architecture panfoma-base --dtype bf16 --batch-size 16
ls -la benchmarks/results/*-cuda.*
