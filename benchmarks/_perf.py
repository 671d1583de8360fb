"""Helpers shared by the performance scripts: models, inputs, timing, memory, machine facts, tables, JSON.

Memory is measured in a fresh process per model (:func:`run_isolated`), so one model's freed buffers never
hide another's peak: on CPU the peak resident set size (``ru_maxrss``) minus the RSS before the work, on CUDA
``torch.cuda.max_memory_allocated`` minus what was allocated before.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import resource
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from panfoma_sc.nn import CONFIGS, PanFoMa, PanFoMaConfig
from panfoma_sc.nn.baselines import build_baseline

RESULTS = Path(__file__).parent / "results"
MODELS = ("panfoma", "full-attention", "unidirectional-mamba")
#: Vocabulary size of the shipped panfoma-tiny checkpoint, version 2.2 (only the embedding table depends on it;
#: results written before 2026-11-29 used version 2.1's 21,303)
VOCAB_SIZE = 24045
#: Real data used by the end-to-end scripts (raw counts, all genes).
PBMC3K = "pbmc3k_allgenes_celltypes.h5ad"


def model_parser(description: str, *, batch_size: int) -> argparse.ArgumentParser:
    """The options every model benchmark takes: architecture, genes per cell, batch, device, dtype, threads."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--architecture", default="panfoma-tiny", choices=sorted(CONFIGS))
    parser.add_argument("--n-genes", type=int, default=None, help="genes per cell (default: the architecture's)")
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="bf16 = autocast (CUDA only)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: all cores)")
    return parser


def embed_parser(description: str, *, cells: int) -> argparse.ArgumentParser:
    """The options of the ``pf.tl.embed`` scripts: pbmc3k cells, batch, device, threads."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--cells", type=int, default=cells)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: all cores)")
    return parser


def config_for(architecture: str) -> PanFoMaConfig:
    """A named architecture with the shipped vocabulary size."""
    return CONFIGS[architecture].replace(vocab_size=VOCAB_SIZE)


def build(name: str, config: PanFoMaConfig, device: str) -> torch.nn.Module:
    """PanFoMa or a baseline, random weights (seed 0), on ``device``."""
    torch.manual_seed(0)
    model = PanFoMa(config) if name == "panfoma" else build_baseline(name, config)
    return model.to(device)


def random_tokens(config: PanFoMaConfig, cells: int, n_genes: int, device: str) -> tuple[torch.Tensor, ...]:
    """``(cells, n_chunks, n_genes / n_chunks)`` random ids and bins, no padding."""
    generator = torch.Generator().manual_seed(0)
    shape = (cells, config.n_chunks, n_genes // config.n_chunks)
    ids = torch.randint(2, config.vocab_size, shape, generator=generator)
    bins = torch.randint(0, config.n_bins, shape, generator=generator)
    return ids.to(device), bins.to(device), torch.zeros(shape, dtype=torch.bool, device=device)


def synchronize(device: str) -> None:
    """Wait for queued kernels (CUDA), so wall-clock times are real."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def median_seconds(fn: Callable[[], Any], *, repeats: int, device: str, warmup: int = 1) -> float:
    """Median wall-clock seconds of ``fn()`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def autocast(device: str, dtype: str):
    """bf16 autocast context on CUDA when asked for, else a no-op context."""
    enabled = device.startswith("cuda") and dtype == "bf16"
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=enabled)


class PeakMemory:
    """Peak memory of the work done inside the ``with`` block, in MiB (see the module docstring).

    On CPU, ``baseline`` (an RSS taken before any warm-up) replaces the RSS at entry, because memory freed by a
    warm-up call stays resident and would otherwise hide the work's own use.
    """

    def __init__(self, device: str, *, baseline: float | None = None) -> None:
        self.device = device
        self.baseline = baseline
        self.before = 0.0
        self.peak = 0.0

    def __enter__(self) -> PeakMemory:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.before = torch.cuda.memory_allocated() / 2**20
        else:
            self.before = current_rss_mib() if self.baseline is None else self.baseline
        return self

    def __exit__(self, *exc) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() / 2**20
        else:
            self.peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

    @property
    def increase(self) -> float:
        """Peak minus what was in use when the block started."""
        return max(0.0, self.peak - self.before)


def current_rss_mib() -> float:
    """Resident set size of this process now."""
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_isolated(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in a fresh (spawned) process; returns its (picklable) result."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


def set_threads(threads: int | None) -> None:
    """Use ``threads`` intra-op threads (None: torch's default, one per core), in panfoma-sc's runs too."""
    if threads:
        import panfoma_sc as pf

        torch.set_num_threads(threads)
        pf.settings.n_threads = threads


def machine(device: str) -> dict[str, Any]:
    """Facts needed to read the numbers: device, cores, threads, load, versions."""
    info = {
        "device": device,
        "device_name": torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor() or "cpu",
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "torch": torch.__version__,
        "python": platform.python_version(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if not device.startswith("cuda"):
        info["note"] = (
            "shared 2-core CPU machine: other workloads ran at the same time, so absolute numbers are noisy; "
            "ratios between models were measured in the same run"
        )
    return info


def matmul_flops_per_s(device: str, *, size: int = 1024, repeats: int = 10, dtype: torch.dtype = torch.float32):
    """Achieved FLOP/s of a plain ``size x size`` matmul, the reference for the model's FLOP/s share."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    seconds = median_seconds(lambda: a @ b, repeats=repeats, device=device, warmup=2)
    return 2 * size**3 / seconds


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of ``fn()`` by ``torch.utils.flop_counter`` (matmuls, attention, convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """Print ``rows`` as a markdown table of ``columns`` and return it."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
        return "" if value is None else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    table = "\n".join(lines)
    print(table)
    return table


def write_json(name: str, payload: dict[str, Any]) -> Path:
    """Write ``benchmarks/results/<name>.json`` and return its path."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {path}")
    return path


def pbmc3k_cells(n_cells: int | None = None):
    """The first ``n_cells`` cells (all when None) of pbmc3k, in memory: the data of the end-to-end scripts."""
    import anndata as ad

    adata = ad.read_h5ad(data_path(PBMC3K))
    return adata if n_cells is None else adata[:n_cells].copy()


def data_path(name: str) -> Path:
    """A file of the shared data folder (``PANFOMA_DATA_DIR``, else ``../shared/data`` next to the repo)."""
    folder = os.environ.get("PANFOMA_DATA_DIR") or str(Path(__file__).resolve().parents[2] / "shared" / "data")
    path = Path(folder) / name
    if not path.is_file():
        msg = f"{name} not found in {folder}; set PANFOMA_DATA_DIR to the shared data folder."
        raise FileNotFoundError(msg)
    return path
