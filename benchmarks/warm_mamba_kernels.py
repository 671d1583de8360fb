"""Compile ``mamba_ssm``'s Triton kernels ahead of the timed GPU runs, in parallel processes. Measures nothing.

Triton autotunes each of ``mamba_ssm``'s scan kernels on their first use in a process: it compiles every
candidate configuration, one after another, for every new argument specialization (sequence lengths, batch sizes
and dtypes that divide differently). On an H100 that took minutes for one forward and backward, so the timed
benchmarks of a short lease ran out of time compiling (``benchmarks/results/gpu-run-h100.log``). This script
gives each of ``--processes`` processes a share of every autotuned kernel's candidates and runs the layer
shapes that the GPU tests and benchmarks use; the compiled kernels land in Triton's on-disk cache, where the
timed runs' own autotuning then finds them (it still times every candidate, in its own process).

Usage (``run_gpu.sh`` runs it first)::

    python benchmarks/warm_mamba_kernels.py --processes 14
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from functools import partial

import _perf
import torch

from panfoma_sc.nn.ssd import KERNELS_SWITCH, Mamba2, mamba_ssm_kernels

os.environ[KERNELS_SWITCH] = "require"  # a failing candidate is reported, not replaced by the PyTorch scan

#: Models of the timed benchmarks that run Mamba2 layers (the full-attention baseline has none)
MAMBA_MODELS = ("panfoma", "unidirectional-mamba")


def autotuners() -> Iterator:
    """Every Triton ``Autotuner`` in ``mamba_ssm``'s Triton modules (unwrapping ``heuristics`` layers)."""
    from triton.runtime.autotuner import Autotuner

    seen = set()
    for name, module in list(sys.modules.items()):
        if not name.startswith("mamba_ssm.ops.triton") or module is None:
            continue
        for value in vars(module).values():
            while value is not None and not isinstance(value, type):
                if isinstance(value, Autotuner) and id(value) not in seen:
                    seen.add(id(value))
                    yield value
                value = getattr(value, "fn", None)


def smallest(configs: list) -> object:
    """The candidate with the least shared memory and registers, roughly: smallest tiles, fewest stages and warps."""

    def size(config) -> int:
        tiles = math.prod(value for value in config.kwargs.values() if isinstance(value, int))
        return tiles * (config.num_stages or 1) * (config.num_warps or 1)

    return min(configs, key=size)


def keep_share(shard: int, processes: int) -> int:
    """Keep this process's share of every autotuner's candidates; return how many autotuners were found.

    The smallest candidate joins every share: a candidate that needs more shared memory than the GPU has fails
    to launch when it is the only one (on the H200 some did), and with two the autotuner skips it and the
    workload goes on to the kernels after it.
    """
    found = 0
    for tuner in autotuners():
        configs = list(tuner.configs)
        share = [config for i, config in enumerate(configs) if i % processes == shard]
        fallback = smallest(configs)
        tuner.configs = [*share, fallback] if fallback not in share else share
        found += 1
    return found


def forget_tuning() -> None:
    """Drop the in-process autotuning results, so that the next shape compiles this share again."""
    for tuner in autotuners():
        tuner.cache.clear()


def workloads() -> list[tuple[str, Callable[[], None]]]:
    """The layer shapes of ``pytest -m gpu`` and ``run_gpu.sh``'s benchmarks, each as a callable."""
    jobs = []

    def kernel_test(length: int) -> None:  # tests/nn/test_mamba_ssm_compat.py, full-precision fp32 dots
        os.environ["TRITON_F32_DEFAULT"] = "ieee"
        try:
            torch.manual_seed(0)
            layer = Mamba2(d_model=128, headdim=32, d_state=32, ngroups=2, chunk_size=64, device="cuda")
            u = torch.randn(2, length, 128, device="cuda", requires_grad=True)
            layer(u).square().sum().backward()
        finally:
            del os.environ["TRITON_F32_DEFAULT"]

    for length in (64, 100, 1024):
        jobs.append((f"kernel test, length {length}", partial(kernel_test, length)))

    def model_pass(architecture: str, name: str, dtype: str, backward: bool) -> None:
        config = _perf.config_for(architecture)
        model = _perf.build(name, config, "cuda")
        ids, bins, padding = _perf.random_tokens(config, 16, 1024, "cuda")  # batch divisible by 16, as the runs'
        with torch.set_grad_enabled(backward), _perf.autocast("cuda", dtype):
            out = model(ids, bins, padding)
        if backward:
            out.gene_states.float().square().mean().backward()

    for name in MAMBA_MODELS:
        jobs.append((f"panfoma-base {name} bf16, backward", partial(model_pass, "panfoma-base", name, "bf16", True)))
        for dtype in ("bf16", "fp32"):
            jobs.append((f"panfoma-tiny {name} {dtype}", partial(model_pass, "panfoma-tiny", name, dtype, False)))
    return jobs


def run_share(shard: int, processes: int) -> int:
    """Run every workload with this process's share of the candidates; return the number that failed."""
    if mamba_ssm_kernels() is None:
        print("mamba_ssm's Triton kernels are not importable: nothing to compile", flush=True)
        return 1
    found = keep_share(shard, processes)
    failed = 0
    for label, job in workloads():
        forget_tuning()
        start = time.perf_counter()
        try:
            job()
            torch.cuda.synchronize()
        except Exception as err:  # one failing shape must not stop the others from compiling
            failed += 1
            print(f"[share {shard}] {label}: FAILED {type(err).__name__}: {err}", flush=True)
            continue
        if shard == 0:
            print(f"[share 0] {label}: {time.perf_counter() - start:.1f} s ({found} autotuned kernels)", flush=True)
    return failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    parser.add_argument("--share", type=int, default=None, help=argparse.SUPPRESS)  # set for the worker processes
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.error("needs a CUDA device: Triton compiles for the GPU it runs on")
    if args.share is not None:
        sys.exit(min(run_share(args.share, args.processes), 1))
    start = time.perf_counter()
    command = [sys.executable, __file__, "--processes", str(args.processes), "--share"]
    workers = [subprocess.Popen([*command, str(share)]) for share in range(args.processes)]
    codes = [worker.wait() for worker in workers]
    print(
        f"compiled with {args.processes} processes in {time.perf_counter() - start:.0f} s; "
        f"processes with a failed shape: {sum(code != 0 for code in codes)}",
        flush=True,
    )


if __name__ == "__main__":
    main()
