"""Mamba2 with a pure-PyTorch chunked SSD scan and an optional ``mamba_ssm`` kernel path.

The :class:`Mamba2` module uses the parameter names and shapes of ``mamba_ssm.Mamba2``
(``in_proj``, ``conv1d``, ``dt_bias``, ``A_log``, ``D``, ``norm.weight``, ``out_proj``), so a state dict
saved by one loads into the other. On CUDA, when ``mamba_ssm`` imports, the scan runs in its Triton kernel;
everywhere else it runs in :func:`ssd_scan`, our chunked state-space-duality algorithm.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import math
import os
import sys
import types
import warnings

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["GatedRMSNorm", "Mamba2", "causal_depthwise_conv", "mamba_ssm_kernels", "ssd_recurrence", "ssd_scan"]


# Pairwise log decays are floored here before ``exp``: exp(-80) ~ 2e-35 is below the rounding of any float32 result,
# and float32 ``exp`` of arguments under about -87 (denormal or zero results) or of -inf is 3 to 15 times slower on CPU.
_LOG_DECAY_FLOOR = -80.0


def _segment_sum(log_decay: torch.Tensor) -> torch.Tensor:
    """Pairwise sums of log decays inside a chunk.

    Parameters
    ----------
    log_decay
        Shape ``(..., T)``.

    Returns
    -------
    Shape ``(..., T, T)``: entry ``[i, j]`` is ``sum(log_decay[j + 1 : i + 1])`` for ``i >= j`` and ``-inf``
    above the diagonal, so ``exp`` of it is the causal decay from step ``j`` to step ``i``.
    """
    steps = log_decay.shape[-1]
    # Cumulating a masked copy (rather than differencing one cumsum) avoids catastrophic cancellation.
    repeated = log_decay.unsqueeze(-1).expand(*log_decay.shape, steps)  # (..., T, T): [i, j] = a_i
    strictly_lower = torch.tril(torch.ones(steps, steps, dtype=torch.bool, device=log_decay.device), diagonal=-1)
    sums = torch.cumsum(repeated.masked_fill(~strictly_lower, 0.0), dim=-2)
    causal = torch.tril(torch.ones(steps, steps, dtype=torch.bool, device=log_decay.device))
    return sums.masked_fill(~causal, -math.inf)


def _pairwise_log_decays(high: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
    """``cumsum_i - cumsum_j`` for every pair of steps of a chunk, from the cumulated log decays as a float32 pair.

    Shape ``(..., q)`` in, ``(..., q, q)`` out; entries on and below the diagonal are ``<= 0`` (up to rounding).
    """
    pairwise = high.unsqueeze(-1) - high.unsqueeze(-2)
    return pairwise.add_(low.unsqueeze(-1)).sub_(low.unsqueeze(-2))


class _WithinChunks(torch.autograd.Function):
    """The scan's within-chunk term, ``y = (exp(clamp(pairwise)) * tril(scores)) @ x``, saving only its inputs.

    The ``(q x q)`` decay and weight matrices per head are the scan's largest intermediates: letting autograd save
    them (the decays, their ``exp`` and the weights) made them most of a training step's memory. Here the backward
    pass rebuilds them from the chunk's cumulated log decays instead, one block at a time.

    Shapes: ``high``, ``low`` ``(b, g, r, c, q)``; ``scores`` ``(b, g, c, q, q)``; ``x`` ``(b, g, r, c, q, p)``.
    """

    @staticmethod
    def forward(ctx, high, low, scores, x):
        causal = torch.ones(scores.shape[-2:], dtype=scores.dtype, device=scores.device).tril_()
        causal_scores = (scores * causal).unsqueeze(2)  # (b, g, 1, c, q, q), 0 for j > i
        # decay(j->i) (C_i . B_j), built in place in the decay buffer
        weights = _pairwise_log_decays(high, low).clamp_(_LOG_DECAY_FLOOR, 0.0).exp_().mul_(causal_scores)
        ctx.save_for_backward(high, low, scores, x)
        return weights @ x

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y):
        high, low, scores, x = ctx.saved_tensors
        grad_y = grad_y.to(x.dtype)  # under autocast the forward's product may have been lower precision
        causal = torch.ones(scores.shape[-2:], dtype=scores.dtype, device=scores.device).tril_()
        causal_scores = (scores * causal).unsqueeze(2)
        pairwise = _pairwise_log_decays(high, low)
        # clamp passes the gradient only where it did not clip
        clipped = (pairwise < _LOG_DECAY_FLOOR).logical_or_(pairwise > 0.0)
        decays = pairwise.clamp_(_LOG_DECAY_FLOOR, 0.0).exp_()
        grad_weights = grad_y @ x.transpose(-1, -2)
        grad_weights.mul_(decays)  # now the gradient of the causal scores, per head
        grad_scores = grad_weights.sum(dim=2) * causal
        weights = decays.mul_(causal_scores)
        grad_x = weights.transpose(-1, -2) @ grad_y
        # d weights / d pairwise = weights, zero where the clamp clipped
        grad_pairwise = grad_weights.mul_(causal_scores).masked_fill_(clipped, 0.0)
        grad_high = grad_pairwise.sum(dim=-1) - grad_pairwise.sum(dim=-2)
        return grad_high, grad_high.clone(), grad_scores, grad_x


def _accumulation_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the log decays are cumulated in: float64, or float32 on Apple MPS, which has no float64.

    In float32 the decays of strongly decaying chunks lose digits that the float64 sum keeps.
    """
    return torch.float32 if x.device.type == "mps" else torch.promote_types(x.dtype, torch.float64)


def ssd_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int = 64,
) -> torch.Tensor:
    """Selective state-space scan by the chunked state-space-duality (SSD) algorithm.

    Computes, for every head, ``h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T`` and ``y_t = h_t C_t``
    with ``h_0 = 0``: quadratic attention-like work inside chunks of ``chunk_size`` steps and a linear
    recurrence over chunk states, so memory grows linearly with the sequence length.

    Parameters
    ----------
    x
        Inputs, shape ``(batch, length, heads, head_dim)``.
    dt
        Positive step sizes, shape ``(batch, length, heads)``.
    A
        Negative per-head decay rates, shape ``(heads,)``.
    B, C
        Input and output projections, shape ``(batch, length, groups, state)``; ``heads`` must be a
        multiple of ``groups``.
    chunk_size
        Steps per chunk. Lengths that are not a multiple are padded at the end (padding cannot influence
        earlier steps). The result does not depend on it, up to rounding; the time does.

    Returns
    -------
    ``y`` with the shape of ``x``.
    """
    batch, length, heads, head_dim = x.shape
    groups, state = B.shape[2], B.shape[3]
    if heads % groups:
        msg = f"heads ({heads}) must be a multiple of groups ({groups})."
        raise ValueError(msg)
    pad = (-length) % chunk_size
    if pad:
        x = F.pad(x, (0, 0, 0, 0, 0, pad))
        dt = F.pad(dt, (0, 0, 0, pad))
        B = F.pad(B, (0, 0, 0, 0, 0, pad))
        C = F.pad(C, (0, 0, 0, 0, 0, pad))
    n_chunks = (length + pad) // chunk_size
    per_group = heads // groups
    # Two layouts, each a free view of the inputs where possible:
    #   step-major  (b, c, q, g, r, ...) for the contractions over heads * channels (chunk states, carried state),
    #   head-major  (b, g, r, c, q, ...) for the per-head (q x q) decay matrices.
    # Every contraction is one batched matmul, and B and C are used per group, never repeated per head.
    step_major = (batch, n_chunks, chunk_size, groups)
    x_dt = (x * dt.unsqueeze(-1)).view(*step_major, per_group, head_dim)  # discretized input
    B = B.reshape(*step_major, state)
    C = C.reshape(*step_major, state)

    # Log decays cumulated within each chunk: exp(cumsum_i - cumsum_j) is the decay from step j to step i. Summed in
    # float64 and kept as a float32 pair (high part + residual), so that differences keep their digits even after a
    # chunk has decayed a lot, without building the (q x q) differences in float64.
    log_decay = (dt * A).view(*step_major, per_group).permute(0, 3, 4, 1, 2)  # (b, g, r, c, q)
    cumsum = torch.cumsum(log_decay.to(_accumulation_dtype(x)), dim=-1).contiguous()
    high = cumsum.to(x.dtype)
    low = (cumsum - high).to(x.dtype)

    # 1. within each chunk: y_i = sum_{j<=i} (C_i . B_j) decay(j->i) x_j
    scores = C.permute(0, 3, 1, 2, 4) @ B.permute(0, 3, 1, 4, 2)  # (b, g, c, q, q)
    y_within = _WithinChunks.apply(high, low, scores, x_dt.permute(0, 3, 4, 1, 2, 5))  # (b, g, r, c, q, p)

    # 2. state at the end of each chunk, from that chunk's inputs only: (b, c, g, r*p, n)
    decay_to_end = torch.exp(cumsum[..., -1:] - cumsum).to(x.dtype).permute(0, 3, 4, 1, 2).contiguous()
    x_to_end = x_dt * decay_to_end.unsqueeze(-1)  # (b, c, q, g, r, p)
    chunk_states = x_to_end.flatten(-2).permute(0, 1, 3, 4, 2) @ B.transpose(2, 3)

    # 3. carry states across chunks (a short recurrence, written as one masked matmul over chunks): the state
    # entering chunk i is sum_{j<i} decay(end of chunk j -> start of chunk i) * state_j
    chunk_states = chunk_states.view(batch, n_chunks, groups, per_group, head_dim * state).permute(0, 2, 3, 1, 4)
    decay_across = torch.exp(_segment_sum(F.pad(cumsum[..., -1], (1, 0)))).to(x.dtype)  # (b, g, r, c+1, c+1)
    carried = decay_across[..., :-1, 1:] @ chunk_states  # (b, g, r, c, p*n)

    # 4. contribution of the carried-in state to each step of the chunk: (b, c, g, q, n) @ (b, c, g, n, r*p)
    carried = carried.view(batch, groups, per_group, n_chunks, head_dim, state).permute(0, 3, 1, 5, 2, 4)
    y_carried = C.transpose(2, 3) @ carried.reshape(batch, n_chunks, groups, state, per_group * head_dim)
    y_carried = y_carried.view(batch, n_chunks, groups, chunk_size, per_group, head_dim).transpose(2, 3)
    decay_from_start = torch.exp(cumsum).to(x.dtype).permute(0, 3, 4, 1, 2).contiguous()  # (b, c, q, g, r)

    # y_carried first: the sum takes its (step-major) layout, which is what the caller reads next
    y = y_carried * decay_from_start.unsqueeze(-1) + y_within.permute(0, 3, 4, 1, 2, 5)  # (b, c, q, g, r, p)
    return y.reshape(batch, n_chunks * chunk_size, heads, head_dim)[:, :length]


def ssd_recurrence(
    x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor
) -> torch.Tensor:
    """Reference: the same scan as :func:`ssd_scan` as a plain sequential recurrence (slow, for tests)."""
    batch, length, heads, head_dim = x.shape
    groups = B.shape[2]
    B = B.repeat_interleave(heads // groups, dim=2)
    C = C.repeat_interleave(heads // groups, dim=2)
    state = x.new_zeros(batch, heads, head_dim, B.shape[-1])
    outputs = []
    for t in range(length):
        decay = torch.exp(dt[:, t] * A)[..., None, None]  # (b, h, 1, 1)
        update = (dt[:, t, :, None] * x[:, t]).unsqueeze(-1) * B[:, t].unsqueeze(-2)  # (b, h, p, n)
        state = decay * state + update
        outputs.append(torch.einsum("bhpn,bhn->bhp", state, C[:, t]))
    return torch.stack(outputs, dim=1)


class GatedRMSNorm(nn.Module):
    """RMSNorm of ``x * silu(z)`` over groups of channels (``mamba_ssm``'s ``RMSNormGated``, norm after gate)."""

    def __init__(self, dim: int, *, group_size: int, eps: float = 1e-5, device=None, dtype=None) -> None:
        super().__init__()
        self.group_size = group_size
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Normalize ``x`` gated by ``z``; both ``(..., dim)``."""
        # Gate, normalize and scale in float32 (float64 input: float64) with one final cast, as mamba_ssm's kernel and
        # ``rms_norm_ref`` do.
        return _GatedRMSNormFunction.apply(x, z, self.weight, self.group_size, self.eps)


def _norm_dtype(x: torch.Tensor) -> torch.dtype:
    """The norm's working precision: float32, or float64 for float64 input."""
    return torch.promote_types(x.dtype, torch.float32)


def _gate_and_normalize(
    x: torch.Tensor, z: torch.Tensor, group_size: int, eps: float, inv_rms: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``silu(z)``, and ``x * silu(z)`` normalized by its RMS per group of ``group_size`` channels.

    In float32 at least (float64 stays float64). Returns the gate, the normalized values ``(..., groups,
    group_size)`` and ``1 / rms`` ``(..., groups, 1)`` (computed unless given).
    """
    compute = _norm_dtype(x)
    gate = F.silu(z.to(compute))
    normed = (x.to(compute) * gate).unflatten(-1, (-1, group_size))
    if inv_rms is None:
        inv_rms = torch.rsqrt(normed.square().mean(-1, keepdim=True).add_(eps))
    return gate, normed.mul_(inv_rms), inv_rms


class _GatedRMSNormFunction(torch.autograd.Function):
    """:class:`GatedRMSNorm`'s computation, saving ``x``, ``z`` and ``1 / rms`` for a backward pass written out.

    Left to autograd, the gate, the gated values, the normalized values and their scaled copy were each kept per
    block; the backward pass rebuilds them from the inputs instead.
    """

    @staticmethod
    def forward(ctx, x, z, weight, group_size, eps):
        _, normed, inv_rms = _gate_and_normalize(x, z, group_size, eps)
        ctx.save_for_backward(x, z, weight, inv_rms)
        ctx.group_size, ctx.eps = group_size, eps
        return (normed.flatten(-2) * weight.to(normed.dtype)).to(x.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        x, z, weight, inv_rms = ctx.saved_tensors
        gate, normed, _ = _gate_and_normalize(x, z, ctx.group_size, ctx.eps, inv_rms)
        grad_out = grad_out.to(normed.dtype)
        grad_weight = (grad_out * normed.flatten(-2)).flatten(0, -2).sum(0).to(weight.dtype)
        grad_normed = (grad_out * weight.to(normed.dtype)).unflatten(-1, (-1, ctx.group_size))
        # RMS norm: d gated = (d normed - normed * mean(d normed * normed)) / rms, per group
        projection = (grad_normed * normed).mean(-1, keepdim=True)
        grad_gated = grad_normed.sub_(normed.mul_(projection)).mul_(inv_rms).flatten(-2)
        grad_x = (grad_gated * gate).to(x.dtype)
        # d silu(z) / dz = sigmoid(z) (1 + z (1 - sigmoid(z)))
        z_wide = z.to(normed.dtype)
        sigmoid = torch.sigmoid(z_wide)
        silu_slope = (1.0 - sigmoid).mul_(z_wide).add_(1.0).mul_(sigmoid)
        grad_z = grad_gated.mul_(x.to(normed.dtype)).mul_(silu_slope).to(z.dtype)
        return grad_x, grad_z, grad_weight, None, None


#: Environment variable: ``0`` (or ``off``, ``false``) keeps ``mamba_ssm``'s kernels off, so the PyTorch scan runs on
#: CUDA too; ``require`` raises a kernel failure instead of falling back (tests and benchmarks of the kernels).
KERNELS_SWITCH = "PANFOMA_MAMBA_KERNELS"


def _kernels_switch() -> str:
    """``"off"``, ``"require"`` or ``"auto"`` (the kernels when they import, the PyTorch scan after a failure)."""
    value = os.environ.get(KERNELS_SWITCH, "").strip().lower()
    if value in ("0", "off", "false", "no"):
        return "off"
    return "require" if value == "require" else "auto"


def _import_scan():
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

    return mamba_chunk_scan_combined


def _import_with_stand_in():
    """Import the scan with an empty module in place of the compiled ``selective_scan_cuda``, removed after.

    A ``selective_scan_cuda`` already imported (and working) stays as it is.
    """
    if "selective_scan_cuda" in sys.modules:
        return _import_scan()
    stand_in = types.ModuleType("selective_scan_cuda")
    sys.modules["selective_scan_cuda"] = stand_in
    try:
        return _import_scan()
    finally:
        if sys.modules.get("selective_scan_cuda") is stand_in:
            del sys.modules["selective_scan_cuda"]


def _forget_mamba_ssm() -> None:
    """Drop the modules of a failed ``mamba_ssm`` import, so that the next attempt starts afresh."""
    for name in [n for n in sys.modules if n == "mamba_ssm" or n.startswith("mamba_ssm.")]:
        del sys.modules[name]


@functools.cache
def mamba_ssm_kernels():
    """Return ``mamba_ssm``'s chunked-scan kernel, or ``None`` when it cannot be imported.

    The kernel is Triton code; it needs ``mamba_ssm`` and ``triton``, not ``mamba_ssm``'s compiled CUDA
    extension. ``mamba_ssm`` releases nevertheless import that extension (``selective_scan_cuda``, used only
    by Mamba1's selective scan) unconditionally from the package ``__init__``, so a build without it
    (``MAMBA_SKIP_CUDA_BUILD=TRUE``) fails to import, and so does one whose extension was built for another
    torch. An empty stand-in module then takes the extension's place while ``mamba_ssm`` is imported and is
    removed afterwards. Any remaining import error means "no kernels", never a crash; when ``mamba_ssm`` is
    installed, that is a warning (the PyTorch scan is about half as fast on a GPU).
    """
    if importlib.util.find_spec("mamba_ssm") is None:
        return None
    extension_absent = (
        "selective_scan_cuda" not in sys.modules and importlib.util.find_spec("selective_scan_cuda") is None
    )
    try:
        return _import_with_stand_in() if extension_absent else _import_scan()
    except Exception as err:
        error = err
    if not extension_absent:  # the compiled extension is there but does not load; the Triton scan may without it
        _forget_mamba_ssm()
        try:
            return _import_with_stand_in()
        except Exception as err:
            error = err
    _forget_mamba_ssm()
    logger.warning(
        "mamba_ssm is installed but its Triton scan does not import (%s: %s); PanFoMa runs its PyTorch scan, "
        "about half as fast on a GPU.",
        type(error).__name__,
        error,
    )
    return None


#: The first run-time failure of the kernels in this process, if any: they are not tried again after one
_kernel_failure: list[str] = []


def _usable_kernel(device_type: str):
    """The kernel to run on a ``device_type`` tensor: ``None`` off CUDA, when switched off, or after a failure."""
    if device_type != "cuda" or _kernel_failure or _kernels_switch() == "off":
        return None
    return mamba_ssm_kernels()


def _run_kernel(kernel, *args, **kwargs) -> torch.Tensor | None:
    """``kernel(*args, **kwargs)``, or ``None`` (with a warning, once) when its forward pass fails.

    Triton may fail to compile the kernel on some GPUs or machines (no C compiler for its launcher, an old GPU).
    Raised as they are: running out of GPU memory (the PyTorch scan needs more), CUDA errors (the GPU is then
    unusable for the PyTorch scan too), and any failure under ``PANFOMA_MAMBA_KERNELS=require``. A failure in the
    kernel's backward pass (fine-tuning) is raised too: set ``PANFOMA_MAMBA_KERNELS=0`` then.
    """
    try:
        return kernel(*args, **kwargs)
    except torch.cuda.OutOfMemoryError:
        raise
    except Exception as err:
        if _kernels_switch() == "require" or "CUDA error" in str(err):
            raise
        reason = f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0]}"
        _kernel_failure.append(reason)
        warnings.warn(
            f"mamba_ssm's Triton scan failed on this GPU ({reason}). PanFoMa runs its PyTorch scan from now on in "
            f"this process: the same results, about half as fast. Set {KERNELS_SWITCH}=0 to skip the kernels "
            "from the start.",
            RuntimeWarning,
            stacklevel=2,
        )
        return None


class Mamba2(nn.Module):
    """Mamba2 block (SSD layer) with ``mamba_ssm.Mamba2``'s parameter layout.

    Parameters
    ----------
    d_model
        Width of the input and output.
    d_state
        SSM state size per head.
    d_conv
        Width of the causal depthwise convolution.
    expand
        Inner width is ``expand * d_model``.
    headdim
        Channels per SSM head.
    ngroups
        Groups sharing ``B`` and ``C``.
    chunk_size
        Chunk length of the SSD scan.
    use_kernels
        Use ``mamba_ssm``'s Triton kernel when the input is on CUDA and the package imports.
    """

    def __init__(
        self,
        d_model: int,
        *,
        d_state: int = 64,
        d_conv: int = 4,
        expand: int = 2,
        headdim: int = 64,
        ngroups: int = 1,
        chunk_size: int = 64,
        A_init_range: tuple[float, float] = (1.0, 16.0),
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        use_kernels: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        factory_kwargs = {"device": device, "dtype": dtype}
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.d_inner = expand * d_model
        if self.d_inner % headdim:
            msg = f"expand * d_model ({self.d_inner}) must be a multiple of headdim ({headdim})."
            raise ValueError(msg)
        self.headdim = headdim
        self.nheads = self.d_inner // headdim
        self.ngroups = ngroups
        self.chunk_size = chunk_size
        self.use_kernels = use_kernels

        conv_dim = self.d_inner + 2 * ngroups * d_state
        # [z, x, B, C, dt], the order mamba_ssm splits in_proj's output in
        self.in_proj = nn.Linear(
            d_model, 2 * self.d_inner + 2 * ngroups * d_state + self.nheads, bias=False, **factory_kwargs
        )
        self.conv1d = nn.Conv1d(conv_dim, conv_dim, d_conv, groups=conv_dim, padding=d_conv - 1, **factory_kwargs)

        # dt initialised log-uniformly in [dt_min, dt_max]; dt_bias is its inverse softplus
        dt = torch.exp(
            torch.rand(self.nheads, **factory_kwargs) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        )
        dt = dt.clamp(min=dt_init_floor)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        A = torch.empty(self.nheads, **factory_kwargs).uniform_(*A_init_range)
        self.A_log = nn.Parameter(torch.log(A))
        self.D = nn.Parameter(torch.ones(self.nheads, device=device))  # float32 whatever dtype, as in mamba_ssm
        self.norm = GatedRMSNorm(self.d_inner, group_size=self.d_inner // ngroups, **factory_kwargs)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False, **factory_kwargs)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """Apply the block to ``u`` of shape ``(batch, length, d_model)``; causal along ``length``."""
        # in_proj as three products over row blocks of its weight, so z, xBC and dt come out contiguous (slices of
        # one product are strided, and every elementwise operation on them several times slower on CPU)
        conv_dim = self.d_inner + 2 * self.ngroups * self.d_state
        z_weight, xBC_weight, dt_weight = torch.split(self.in_proj.weight, [self.d_inner, conv_dim, self.nheads])
        z, xBC, dt = F.linear(u, z_weight), F.linear(u, xBC_weight), F.linear(u, dt_weight)
        xBC = causal_depthwise_conv(xBC, self.conv1d.weight, self.conv1d.bias, silu=True)  # (b, L, conv_dim)
        x, B, C = torch.split(xBC, [self.d_inner, self.ngroups * self.d_state, self.ngroups * self.d_state], dim=-1)
        x = x.unflatten(-1, (self.nheads, self.headdim))  # (b, L, h, p)
        B = B.unflatten(-1, (self.ngroups, self.d_state))  # (b, L, g, n)
        C = C.unflatten(-1, (self.ngroups, self.d_state))
        A = -torch.exp(self.A_log.float())  # (h,)

        kernel = _usable_kernel(u.device.type) if self.use_kernels else None
        y = None
        if kernel is not None:
            y = _run_kernel(
                kernel, x, dt, A, B, C, chunk_size=self.chunk_size, D=self.D, dt_bias=self.dt_bias, dt_softplus=True
            )
        if y is None:
            dt = F.softplus(dt.float() + self.dt_bias.float())  # (b, L, h); float32 like the kernel
            y = ssd_scan(x.float(), dt, A, B.float(), C.float(), chunk_size=self.chunk_size)
            y = y.addcmul_(x.float(), self.D.float()[:, None]).to(x.dtype)  # skip connection D * x
        y = self.norm(y.flatten(-2), z)
        return self.out_proj(y)


def causal_depthwise_conv(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, *, silu: bool = False
) -> torch.Tensor:
    """Causal depthwise 1-D convolution along the steps of ``x`` ``(batch, length, channels)``.

    Equals ``nn.Conv1d(channels, channels, k, groups=channels, padding=k - 1)`` applied to the channels-first
    transpose and cut to ``length`` steps (``weight`` ``(channels, 1, k)``, ``bias`` ``(channels,)``), computed as
    ``k`` shifted multiply-adds in the steps-first layout, so the input and output need no transposed copies. The
    backward pass is written out the same way (:class:`_CausalDepthwiseConv`). ``silu=True`` returns
    ``F.silu`` of the result, as ``mamba_ssm``'s ``causal_conv1d(..., activation="silu")``: the backward pass
    recomputes the convolution instead of keeping its output (a tensor the size of ``x`` less per layer in training).
    """
    if bias is None:
        bias = weight.new_zeros(weight.shape[0])
    return _CausalDepthwiseConv.apply(x, weight, bias, silu)


def _shifted_taps(x: torch.Tensor, taps: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``bias + sum_s taps[k - 1 - s] * x[:, t - s]`` over shifts ``s < k`` (steps before the start are zero)."""
    width = taps.shape[0]
    out = torch.addcmul(bias, x, taps[width - 1])
    for shift in range(1, width):  # shifts past the sequence's end touch empty slices
        out[:, shift:].addcmul_(x[:, :-shift], taps[width - 1 - shift])
    return out


class _CausalDepthwiseConv(torch.autograd.Function):
    """:func:`causal_depthwise_conv` with its gradients as shifted multiply-adds too.

    Left to autograd, the forward pass's in-place updates of shifted slices cost a full copy of the gradient per tap
    in the backward pass (autograd's ``CopySlices``), about a quarter of a training step of the decoder on CPU.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, silu):
        width = weight.shape[-1]
        # (k, channels), tap k-1 on the current step; in x's dtype, as conv1d runs under autocast
        taps = weight.reshape(weight.shape[0], width).t().to(x.dtype).contiguous()
        ctx.weight_shape, ctx.weight_dtype, ctx.bias_dtype, ctx.silu = weight.shape, weight.dtype, bias.dtype, silu
        bias = bias.to(x.dtype)
        ctx.save_for_backward(x, taps, bias)
        out = _shifted_taps(x, taps, bias)
        return F.silu(out) if silu else out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        x, taps, bias = ctx.saved_tensors
        grad_out = grad_out.to(x.dtype)
        if ctx.silu:  # through silu(c) = c * sigmoid(c), with c recomputed: d/dc = s * (1 + c * (1 - s))
            conv = _shifted_taps(x, taps, bias)
            gate = torch.sigmoid(conv)
            grad_out = grad_out * gate * conv.mul_(1 - gate).add_(1)
            del conv, gate
        width = taps.shape[0]
        grad_x = grad_bias = grad_weight = None
        if ctx.needs_input_grad[0]:  # the transposed (anti-causal) convolution of the gradient
            grad_x = grad_out * taps[width - 1]
            for shift in range(1, width):
                grad_x[:, :-shift].addcmul_(grad_out[:, shift:], taps[width - 1 - shift])
        if ctx.needs_input_grad[1]:
            steps = x.shape[1]
            grad_taps = torch.stack(
                [(grad_out[:, shift:] * x[:, : max(steps - shift, 0)]).sum(dim=(0, 1)) for shift in range(width)]
            )  # row s: the tap applied to the step s before
            grad_weight = grad_taps.flip(0).t().reshape(ctx.weight_shape).to(ctx.weight_dtype)
        if ctx.needs_input_grad[2]:
            grad_bias = grad_out.sum(dim=(0, 1)).to(ctx.bias_dtype)
        return grad_x, grad_weight, grad_bias, None
