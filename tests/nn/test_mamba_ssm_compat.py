"""Compatibility of :mod:`panfoma_sc.nn.ssd` with the reference ``mamba_ssm`` package.

Everything here skips (with the import error as the reason) when ``mamba_ssm`` cannot be imported. Its releases
import the compiled ``selective_scan_cuda`` extension unconditionally from the package ``__init__``; none of the
code compared here uses that extension, so where it is not built a placeholder module stands in for it while
``mamba_ssm`` is imported. ``triton`` (imported by ``mamba_ssm.ops.triton.*``) must be installed, and the
package ``__init__`` also needs ``huggingface_hub`` and ``transformers``.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from panfoma_sc.nn import ssd
from panfoma_sc.nn.ssd import Mamba2, ssd_scan

CONFIGS = [
    pytest.param({"d_model": 128, "headdim": 32, "d_state": 32}, id="d128-p32-n32"),
    pytest.param({"d_model": 64, "headdim": 16, "d_state": 16, "ngroups": 2}, id="d64-p16-n16-g2"),
]


def _import_mamba(*names: str) -> types.ModuleType:
    """Import the first importable of ``names`` (``mamba_ssm`` submodules), or skip the test."""
    errors = []
    with pytest.MonkeyPatch.context() as mp:
        if "selective_scan_cuda" not in sys.modules and importlib.util.find_spec("selective_scan_cuda") is None:
            # stand-in for the compiled CUDA extension, only while mamba_ssm's modules are first imported
            mp.setitem(sys.modules, "selective_scan_cuda", types.ModuleType("selective_scan_cuda"))
        for name in names:
            try:
                return importlib.import_module(name)
            except ImportError as err:
                errors.append(f"{name}: {type(err).__name__}: {err}")
    pytest.skip("mamba_ssm is not importable: " + "; ".join(errors))


@pytest.fixture(scope="module")
def mamba2_module():
    return _import_mamba("mamba_ssm.modules.mamba2")


@pytest.fixture(scope="module")
def ssd_minimal():
    # mamba_ssm 2.x keeps it in modules/; look in ops/triton/ too in case it moves
    return _import_mamba("mamba_ssm.modules.ssd_minimal", "mamba_ssm.ops.triton.ssd_minimal")


@pytest.fixture(scope="module")
def layernorm_gated():
    return _import_mamba("mamba_ssm.ops.triton.layernorm_gated")


@pytest.fixture(scope="module")
def ssd_combined():
    return _import_mamba("mamba_ssm.ops.triton.ssd_combined")


def _perturb_(module: torch.nn.Module, seed: int) -> None:
    """Move every parameter away from its initialization so that a load visibly changes values."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(0.1 * torch.randn(param.shape, generator=gen, dtype=torch.float64).to(param.device, param.dtype))


def _assert_state_dicts_equal(ours: dict, theirs: dict) -> None:
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        assert ours[key].dtype == value.dtype, key
        torch.testing.assert_close(ours[key], value, rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("cfg", CONFIGS)
def test_state_dict_round_trip(mamba2_module, cfg):
    torch.manual_seed(0)
    theirs = mamba2_module.Mamba2(**cfg, use_mem_eff_path=False, device="cpu")
    ours = Mamba2(**cfg)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}

    _perturb_(theirs, seed=1)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    _assert_state_dicts_equal(ours.state_dict(), theirs.state_dict())

    _perturb_(ours, seed=2)
    back = mamba2_module.Mamba2(**cfg, use_mem_eff_path=False, device="cpu")
    back.load_state_dict(ours.state_dict(), strict=True)
    _assert_state_dicts_equal(back.state_dict(), ours.state_dict())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_parameter_dtypes_match(mamba2_module, dtype):
    cfg = {"d_model": 64, "headdim": 16, "d_state": 16, "ngroups": 2}
    theirs = mamba2_module.Mamba2(**cfg, use_mem_eff_path=False, dtype=dtype)
    ours = Mamba2(**cfg, dtype=dtype)
    assert {k: v.dtype for k, v in ours.state_dict().items()} == {k: v.dtype for k, v in theirs.state_dict().items()}


def _random_scan_inputs(length, heads, ngroups, head_dim=8, state=16, batch=2, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, length, heads, head_dim, generator=gen, dtype=dtype)
    dt = F.softplus(torch.randn(batch, length, heads, generator=gen, dtype=dtype) - 1.0)
    A = -torch.exp(torch.rand(heads, generator=gen, dtype=dtype))
    B = torch.randn(batch, length, ngroups, state, generator=gen, dtype=dtype)
    C = torch.randn(batch, length, ngroups, state, generator=gen, dtype=dtype)
    return x, dt, A, B, C


def _groups_to_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """``repeat(t, "b l g n -> b l (g h) n")``, mamba_ssm's group-to-head mapping."""
    batch, length, groups, state = t.shape
    return t[:, :, :, None].expand(batch, length, groups, heads // groups, state).reshape(batch, length, heads, state)


@pytest.mark.parametrize(
    ("length", "chunk_size", "heads", "ngroups"), [(128, 32, 4, 1), (256, 64, 4, 2), (100, 32, 6, 3)]
)
def test_ssd_scan_matches_ssd_minimal_discrete(ssd_minimal, length, chunk_size, heads, ngroups):
    x, dt, A, B, C = _random_scan_inputs(length, heads, ngroups)
    ours = ssd_scan(x, dt, A, B, C, chunk_size=chunk_size)

    # ssd_minimal_discrete takes the discretized X * dt and A * dt, per-head B and C, and whole chunks only;
    # padding at the end cannot influence earlier steps.
    pad = (-length) % chunk_size
    theirs, _ = ssd_minimal.ssd_minimal_discrete(
        F.pad(x * dt[..., None], (0, 0, 0, 0, 0, pad)),
        F.pad(A * dt, (0, 0, 0, pad)),
        F.pad(_groups_to_heads(B, heads), (0, 0, 0, 0, 0, pad)),
        F.pad(_groups_to_heads(C, heads), (0, 0, 0, 0, 0, pad)),
        chunk_size,
    )
    torch.testing.assert_close(ours, theirs[:, :length], rtol=1e-10, atol=1e-10)


def test_kernel_kwargs_semantics(ssd_combined):
    """Our non-kernel path equals mamba_ssm's torch reference of the fused scan, given ``Mamba2.forward``'s kwargs."""
    heads, ngroups, chunk_size = 4, 2, 32
    x, dt_raw, A, B, C = _random_scan_inputs(128, heads, ngroups, dtype=torch.float32)
    gen = torch.Generator().manual_seed(1)
    dt_bias = torch.randn(heads, generator=gen) - 3.0
    D = torch.randn(heads, generator=gen)
    kwargs = {"chunk_size": chunk_size, "D": D, "dt_bias": dt_bias, "dt_softplus": True}

    # the fused kernel accepts exactly these arguments
    inspect.signature(ssd_combined.mamba_chunk_scan_combined).bind(x, dt_raw, A, B, C, **kwargs)
    theirs = ssd_combined.ssd_chunk_scan_combined_ref(x, dt_raw, A, B, C, **kwargs)

    dt = F.softplus(dt_raw + dt_bias)
    ours = ssd_scan(x, dt, A, B, C, chunk_size=chunk_size) + x * D[:, None]
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def _reference_forward(state: dict, cfg: dict, u: torch.Tensor, ssd_minimal, layernorm_gated) -> torch.Tensor:
    """``mamba_ssm.Mamba2.forward`` (no mem-eff path, no causal_conv1d) from a state dict, all in ``u.dtype``."""
    d_model, headdim, d_state = cfg["d_model"], cfg["headdim"], cfg["d_state"]
    ngroups, chunk_size, d_conv = cfg.get("ngroups", 1), cfg["chunk_size"], 4
    d_inner = 2 * d_model
    nheads = d_inner // headdim
    batch, length, _ = u.shape

    zxbcdt = F.linear(u, state["in_proj.weight"])  # order [z, x, B, C, dt]
    z, xBC, dt = torch.split(zxbcdt, [d_inner, d_inner + 2 * ngroups * d_state, nheads], dim=-1)
    xBC = F.conv1d(
        xBC.transpose(1, 2), state["conv1d.weight"], state["conv1d.bias"], padding=d_conv - 1, groups=xBC.shape[-1]
    )
    xBC = F.silu(xBC.transpose(1, 2)[:, : -(d_conv - 1)])
    x, B, C = torch.split(xBC, [d_inner, ngroups * d_state, ngroups * d_state], dim=-1)
    x = x.reshape(batch, length, nheads, headdim)
    B = _groups_to_heads(B.reshape(batch, length, ngroups, d_state), nheads)
    C = _groups_to_heads(C.reshape(batch, length, ngroups, d_state), nheads)
    A = -torch.exp(state["A_log"].to(u.dtype))
    dt = F.softplus(dt + state["dt_bias"])

    pad = (-length) % chunk_size
    y, _ = ssd_minimal.ssd_minimal_discrete(
        F.pad(x * dt[..., None], (0, 0, 0, 0, 0, pad)),
        F.pad(A * dt, (0, 0, 0, pad)),
        F.pad(B, (0, 0, 0, 0, 0, pad)),
        F.pad(C, (0, 0, 0, 0, 0, pad)),
        chunk_size,
    )
    y = y[:, :length] + x * state["D"].to(u.dtype)[:, None]
    y = layernorm_gated.rms_norm_ref(
        y.reshape(batch, length, d_inner),
        state["norm.weight"],
        None,
        z=z,
        eps=1e-5,
        group_size=d_inner // ngroups,
        norm_before_gate=False,
    )
    return F.linear(y, state["out_proj.weight"])


@pytest.mark.parametrize("cfg", CONFIGS)
@pytest.mark.parametrize("length", [64, 100])
def test_forward_matches_reference_float64(mamba2_module, ssd_minimal, layernorm_gated, cfg, length):
    cfg = {**cfg, "chunk_size": 32}
    torch.manual_seed(0)
    theirs = mamba2_module.Mamba2(**cfg, use_mem_eff_path=False, dtype=torch.float64)
    _perturb_(theirs, seed=3)
    ours = Mamba2(**cfg, dtype=torch.float64)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    u = torch.randn(2, length, cfg["d_model"], dtype=torch.float64)

    expected = _reference_forward(theirs.state_dict(), cfg, u, ssd_minimal, layernorm_gated)
    with torch.no_grad():
        got = ours(u)
    assert got.dtype == torch.float64
    # our scan and norm (like mamba_ssm's rms_norm_ref, which upcasts with .float()) run in float32 internally
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cfg", CONFIGS)
@pytest.mark.parametrize("length", [64, 100])
def test_forward_matches_mamba_ssm_module_on_cpu(
    mamba2_module, ssd_combined, layernorm_gated, monkeypatch, cfg, length
):
    """Run mamba_ssm's own ``Mamba2.forward`` on CPU with its Triton calls swapped for its torch references."""

    def scan_ref(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, dt_softplus=False, **rest):
        assert all(not v for k, v in rest.items() if k != "dt_limit"), rest
        assert rest.get("dt_limit", (0.0, float("inf"))) == (0.0, float("inf"))
        pad = (-x.shape[1]) % chunk_size
        y = ssd_combined.ssd_chunk_scan_combined_ref(
            F.pad(x, (0, 0, 0, 0, 0, pad)),
            F.pad(dt, (0, 0, 0, pad)),
            A,
            F.pad(B, (0, 0, 0, 0, 0, pad)),
            F.pad(C, (0, 0, 0, 0, 0, pad)),
            chunk_size,
            D=D,
            z=z,
            dt_bias=dt_bias,
            dt_softplus=dt_softplus,
        )
        return y[:, : x.shape[1]]

    def norm_ref(x, weight, bias, z=None, eps=1e-6, group_size=None, norm_before_gate=True):
        return layernorm_gated.rms_norm_ref(
            x, weight, bias, z=z, eps=eps, group_size=group_size, norm_before_gate=norm_before_gate
        )

    monkeypatch.setattr(mamba2_module, "mamba_chunk_scan_combined", scan_ref)
    monkeypatch.setattr(mamba2_module, "causal_conv1d_fn", None)
    monkeypatch.setattr(layernorm_gated, "rmsnorm_fn", norm_ref)

    cfg = {**cfg, "chunk_size": 32}
    torch.manual_seed(0)
    theirs = mamba2_module.Mamba2(**cfg, use_mem_eff_path=False)
    _perturb_(theirs, seed=4)
    ours = Mamba2(**cfg)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    u = torch.randn(2, length, cfg["d_model"])
    with torch.no_grad():
        torch.testing.assert_close(ours(u), theirs(u), rtol=1e-4, atol=1e-4)


def _kernels_or_skip():
    _import_mamba("mamba_ssm.ops.triton.ssd_combined")
    ssd.mamba_ssm_kernels.cache_clear()  # an earlier failed import attempt may be cached
    if ssd.mamba_ssm_kernels() is None:
        pytest.skip("mamba_ssm's mamba_chunk_scan_combined is not importable")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("length", [64, 100, 1024])
def test_kernel_path_matches_torch_path_on_cuda(monkeypatch, length):
    # full-precision fp32 dots in Triton (its default is TF32), so both paths compute the same thing in fp32
    monkeypatch.setenv("TRITON_F32_DEFAULT", "ieee")
    # a kernel failure must fail the test, not fall back to the PyTorch scan (which would compare it with itself)
    monkeypatch.setenv(ssd.KERNELS_SWITCH, "require")
    monkeypatch.setattr(ssd, "_kernel_failure", [])
    _kernels_or_skip()
    torch.manual_seed(0)
    model = Mamba2(d_model=128, headdim=32, d_state=32, ngroups=2, chunk_size=64, device="cuda")
    _perturb_(model, seed=5)
    u = torch.randn(2, length, 128, device="cuda")
    weight = torch.randn(2, length, 128, device="cuda")

    def run(use_kernels: bool):
        model.use_kernels = use_kernels
        model.zero_grad(set_to_none=True)
        inp = u.clone().requires_grad_(True)
        out = model(inp)
        (out * weight).sum().backward()
        grads = {"input": inp.grad, **{name: p.grad.clone() for name, p in model.named_parameters()}}
        return out.detach(), grads

    out_kernel, grads_kernel = run(True)
    out_torch, grads_torch = run(False)
    torch.testing.assert_close(out_kernel, out_torch, rtol=1e-3, atol=1e-3)
    for name, expected in grads_torch.items():
        scale = max(1.0, expected.abs().max().item())
        torch.testing.assert_close(grads_kernel[name], expected, rtol=1e-3, atol=1e-3 * scale, msg=name)
