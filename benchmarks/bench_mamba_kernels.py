"""One Mamba2 layer: ``mamba_ssm``'s Triton scan against our pure-PyTorch SSD scan, forward and backward.

Same module, same weights, same input; only :attr:`panfoma_sc.nn.ssd.Mamba2.use_kernels` differs. Needs CUDA
(the kernel path exists only there) and an importable ``mamba_ssm`` (``pip install panfoma-sc[gpu]``).

Usage::

    python benchmarks/bench_mamba_kernels.py --architecture panfoma-base --lengths 1024 4096 16384 --dtype bf16

Prints a table and writes ``benchmarks/results/mamba-kernels-<architecture>-<dtype>.json``.
"""

from __future__ import annotations

import argparse
import os

import _perf
import torch

from panfoma_sc.nn.ssd import KERNELS_SWITCH, Mamba2, mamba_ssm_kernels

os.environ[KERNELS_SWITCH] = "require"  # a kernel failure stops the run instead of timing the PyTorch scan twice


def measure(layer: Mamba2, u: torch.Tensor, *, use_kernels: bool, dtype: str, repeats: int) -> dict[str, float]:
    """Median forward and forward+backward milliseconds, and the peak memory of one forward+backward."""
    layer.use_kernels = use_kernels
    device = str(u.device)

    def forward():
        with torch.no_grad(), _perf.autocast(device, dtype):
            layer(u)

    def forward_backward():
        layer.zero_grad(set_to_none=True)
        with _perf.autocast(device, dtype):
            out = layer(u.requires_grad_(True))
        out.float().square().mean().backward()

    fwd = _perf.median_seconds(forward, repeats=repeats, device=device, warmup=2)
    fwd_bwd = _perf.median_seconds(forward_backward, repeats=repeats, device=device, warmup=2)
    with _perf.PeakMemory(device) as memory:
        forward_backward()
    return {"forward_ms": 1e3 * fwd, "forward_backward_ms": 1e3 * fwd_bwd, "peak_mib": memory.increase}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--architecture", default="panfoma-base", choices=sorted(_perf.CONFIGS))
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--dtype", default="bf16", choices=["fp32", "bf16"])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.error("needs a CUDA device: the kernel path runs only there")
    if mamba_ssm_kernels() is None:
        parser.error("mamba_ssm's Triton kernels are not importable; install panfoma-sc[gpu]")

    config = _perf.config_for(args.architecture)
    torch.manual_seed(0)
    layer = Mamba2(
        d_model=config.d_model,
        d_state=config.d_state,
        d_conv=config.d_conv,
        expand=config.expand,
        headdim=config.headdim,
        chunk_size=config.ssd_chunk_size,
        device="cuda",
    )
    rows = []
    for length in args.lengths:
        u = torch.randn(args.batch_size, length, config.d_model, device="cuda")
        for use_kernels in (True, False):
            row = {"length": length, "path": "mamba_ssm kernel" if use_kernels else "torch SSD"}
            row |= measure(layer, u, use_kernels=use_kernels, dtype=args.dtype, repeats=args.repeats)
            rows.append(row)
        kernel, torch_path = rows[-2], rows[-1]
        kernel["speedup_forward"] = torch_path["forward_ms"] / kernel["forward_ms"]
        kernel["speedup_forward_backward"] = torch_path["forward_backward_ms"] / kernel["forward_backward_ms"]
    print(f"\nOne Mamba2 layer of {args.architecture}, batch {args.batch_size}, {args.dtype}\n")
    columns = ["length", "path", "forward_ms", "forward_backward_ms", "peak_mib"]
    table = _perf.print_table(rows, [*columns, "speedup_forward", "speedup_forward_backward"])
    _perf.write_json(
        f"mamba-kernels-{args.architecture}-{args.dtype}",
        {"machine": _perf.machine("cuda"), "args": vars(args), "rows": rows, "table": table},
    )


if __name__ == "__main__":
    main()
