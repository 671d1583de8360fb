"""One Mamba2 block on the pure-PyTorch path: forward + backward time and the activations kept for backward.

Usage::

    python benchmarks/bench_mamba_block.py --batch-size 32 --length 256 --threads 1

Measures an architecture's Mamba2 block (``panfoma-tiny``: d_model 128, d_state 32, head dim 32, chunk 64) with
random weights: the median time of a forward and backward pass, the same for the forward pass alone without
autograd, and the bytes autograd keeps for the backward pass (distinct tensor storages, counted by
``saved_tensors_hooks``), for the whole block and for the SSD scan alone. Run it in two checkouts to compare code
versions. Prints a table and writes ``benchmarks/results/mamba-block-<device>.json``.
"""

from __future__ import annotations

import argparse

import _perf
import torch

from panfoma_sc.nn import CONFIGS
from panfoma_sc.nn.layers import BidirectionalMambaLayer
from panfoma_sc.nn.ssd import ssd_scan


def saved_mib(fn) -> float:
    """MiB of the distinct storages autograd keeps for the backward pass of ``fn()``."""
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return sum(storages.values()) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--architecture", default="panfoma-tiny", choices=sorted(CONFIGS))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--length", type=int, default=256, help="tokens per sequence")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: all cores)")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    _perf.set_threads(args.threads)
    config = _perf.config_for(args.architecture)
    torch.manual_seed(0)
    block = BidirectionalMambaLayer(config).forward_mamba.to(args.device)  # one of PanFoMa's decoder blocks
    block.use_kernels = False  # the pure-PyTorch path, on CUDA too
    u = torch.randn(args.batch_size, args.length, config.d_model, device=args.device, requires_grad=True)
    upstream = torch.randn_like(u)

    def forward_backward() -> None:
        block(u).backward(upstream)

    def forward_only() -> None:
        with torch.no_grad():
            block(u)

    heads = block.nheads
    scan_inputs = [
        torch.randn(args.batch_size, args.length, heads, block.headdim, device=args.device, requires_grad=True),
        (0.1 * torch.rand(args.batch_size, args.length, heads, device=args.device)).requires_grad_(),
        -1.0 - torch.rand(heads, device=args.device),
        torch.randn(args.batch_size, args.length, 1, block.d_state, device=args.device, requires_grad=True),
        torch.randn(args.batch_size, args.length, 1, block.d_state, device=args.device, requires_grad=True),
    ]
    row = {
        "shape": f"{args.batch_size} x {args.length} tokens",
        "forward_backward_ms": 1e3 * _perf.median_seconds(forward_backward, repeats=args.repeats, device=args.device),
        "forward_no_grad_ms": 1e3 * _perf.median_seconds(forward_only, repeats=args.repeats, device=args.device),
        "saved_block_mib": saved_mib(lambda: block(u)),
        "saved_scan_mib": saved_mib(lambda: ssd_scan(*scan_inputs, chunk_size=block.chunk_size)),
        "input_mib": u.numel() * u.element_size() / 2**20,
    }
    print(f"\n{args.architecture} Mamba2 block, {args.device}, {torch.get_num_threads()} thread(s)\n")
    columns = list(row)
    table = _perf.print_table([row], columns)
    _perf.write_json(
        f"mamba-block-{args.device}",
        {"arguments": vars(args), "machine": _perf.machine(args.device), "results": [row], "table": table},
    )


if __name__ == "__main__":
    main()
