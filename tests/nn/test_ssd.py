"""The chunked SSD scan against its sequential reference, and the :class:`Mamba2` block built on it."""

from __future__ import annotations

import importlib.util
import logging
import sys
import warnings

import pytest
import torch

from panfoma_sc.nn import ssd
from panfoma_sc.nn.ssd import GatedRMSNorm, Mamba2, causal_depthwise_conv, mamba_ssm_kernels, ssd_recurrence, ssd_scan

HEADS = 4
HEAD_DIM = 3
STATE = 5


def _scan_inputs(length: int, groups: int, *, seed: int, batch: int = 2) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    kwargs = {"generator": gen, "dtype": torch.float64}
    x = torch.randn(batch, length, HEADS, HEAD_DIM, **kwargs)
    # dt in [0.01, 1] and A in [-4, -0.5]: per-step decays from ~1 down to ~exp(-4), as after softplus in Mamba2
    dt = 0.01 + 0.99 * torch.rand(batch, length, HEADS, **kwargs)
    A = -(0.5 + 3.5 * torch.rand(HEADS, **kwargs))
    B = torch.randn(batch, length, groups, STATE, **kwargs)
    C = torch.randn(batch, length, groups, STATE, **kwargs)
    return x, dt, A, B, C


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("chunk_size", [16, 32])
@pytest.mark.parametrize("length", [1, 37, 64, 100, 129])
def test_ssd_scan_matches_recurrence(length: int, chunk_size: int, groups: int):
    x, dt, A, B, C = _scan_inputs(length, groups, seed=1000 * length + 10 * chunk_size + groups)
    expected = ssd_recurrence(x, dt, A, B, C)
    got = ssd_scan(x, dt, A, B, C, chunk_size=chunk_size)
    assert got.shape == x.shape
    assert got.dtype == torch.float64
    error = (got - expected).abs().max().item()
    print(f"ssd_scan vs ssd_recurrence, L={length} chunk={chunk_size} groups={groups}: max abs error {error:.3e}")
    assert error < 1e-10


def test_float32_accumulation_for_apple_mps_stays_close_to_the_recurrence(monkeypatch):
    """MPS has no float64, so there the log decays are cumulated in float32: at Mamba2's usual decays (per step
    down to exp(-4)) the scan still agrees with the float64 recurrence to float32 rounding."""
    x, dt, A, B, C = (t.float() for t in _scan_inputs(200, 2, seed=3))
    expected = ssd_recurrence(x.double(), dt.double(), A.double(), B.double(), C.double())
    monkeypatch.setattr(ssd, "_accumulation_dtype", lambda x: torch.float32)
    got = ssd_scan(x, dt, A, B, C, chunk_size=64)
    assert got.dtype == torch.float32
    assert (got.double() - expected).abs().max() < 1e-5 * expected.abs().max()


@pytest.mark.parametrize("chunk_size", [32, 64])
def test_float32_scan_keeps_its_digits_when_chunks_decay_strongly(chunk_size: int):
    # Log decays of up to -32 per step sum to hundreds within a chunk. Differencing float32 running sums loses digits
    # there: 2.8e-6 (chunk 32) and 4.2e-6 (chunk 64) relative error on these inputs; the scan stays at 1.2e-7.
    gen = torch.Generator().manual_seed(5)
    length, heads = 300, 8
    x = torch.randn(1, length, heads, 16, generator=gen)
    dt = 2.0 * torch.rand(1, length, heads, generator=gen)
    A = -16.0 * torch.rand(heads, generator=gen)
    B = torch.randn(1, length, 1, 16, generator=gen)
    C = torch.randn(1, length, 1, 16, generator=gen)
    expected = ssd_recurrence(x.double(), dt.double(), A.double(), B.double(), C.double())
    got = ssd_scan(x, dt, A, B, C, chunk_size=chunk_size)
    assert got.dtype == torch.float32
    assert (got.double() - expected).abs().max() < 1e-6 * expected.abs().max()


def test_ssd_scan_gradients_match_the_recurrence():
    inputs = [t.requires_grad_() for t in _scan_inputs(45, 2, seed=7)]
    weights = torch.randn(2, 45, HEADS, HEAD_DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    (ssd_scan(*inputs, chunk_size=16) * weights).sum().backward()
    got = [t.grad.clone() for t in inputs]
    for t in inputs:
        t.grad = None
    (ssd_recurrence(*inputs) * weights).sum().backward()
    for name, mine, reference in zip(["x", "dt", "A", "B", "C"], got, [t.grad for t in inputs], strict=True):
        torch.testing.assert_close(mine, reference, rtol=1e-9, atol=1e-9, msg=name)


@pytest.mark.parametrize("length", [1, 2, 5, 40])
def test_causal_depthwise_conv_equals_conv1d(length: int):
    torch.manual_seed(0)
    conv = torch.nn.Conv1d(12, 12, 4, groups=12, padding=3, dtype=torch.float64)
    x = torch.randn(3, length, 12, dtype=torch.float64)
    expected = conv(x.transpose(1, 2))[..., :length].transpose(1, 2)
    torch.testing.assert_close(causal_depthwise_conv(x, conv.weight, conv.bias), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        causal_depthwise_conv(x, conv.weight, None), expected - conv.bias, rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize("length", [1, 2, 3, 40])
@pytest.mark.parametrize("with_bias", [True, False])
def test_causal_depthwise_conv_gradients_equal_conv1d(length: int, with_bias: bool):
    torch.manual_seed(1)
    conv = torch.nn.Conv1d(6, 6, 4, groups=6, padding=3, bias=with_bias, dtype=torch.float64)
    x = torch.randn(2, length, 6, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(2, length, 6, dtype=torch.float64)
    parameters = [x, *conv.parameters()]
    expected = torch.autograd.grad((conv(x.transpose(1, 2))[..., :length].transpose(1, 2) * upstream).sum(), parameters)
    got = torch.autograd.grad((causal_depthwise_conv(x, conv.weight, conv.bias) * upstream).sum(), parameters)
    for name, mine, reference in zip(["x", "weight", "bias"], got, expected, strict=False):
        torch.testing.assert_close(mine, reference, rtol=1e-12, atol=1e-12, msg=name)


@pytest.mark.parametrize("length", [1, 3, 40])
def test_causal_depthwise_conv_with_silu_equals_silu_of_conv1d(length: int):
    """The fused activation recomputes the convolution in the backward pass; values and gradients are unchanged."""
    torch.manual_seed(2)
    conv = torch.nn.Conv1d(6, 6, 4, groups=6, padding=3, dtype=torch.float64)
    x = torch.randn(2, length, 6, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(2, length, 6, dtype=torch.float64)
    parameters = [x, *conv.parameters()]
    expected_out = torch.nn.functional.silu(conv(x.transpose(1, 2))[..., :length].transpose(1, 2))
    expected = torch.autograd.grad((expected_out * upstream).sum(), parameters)
    out = causal_depthwise_conv(x, conv.weight, conv.bias, silu=True)
    torch.testing.assert_close(out, expected_out, rtol=1e-12, atol=1e-12)
    got = torch.autograd.grad((out * upstream).sum(), parameters)
    for name, mine, reference in zip(["x", "weight", "bias"], got, expected, strict=True):
        torch.testing.assert_close(mine, reference, rtol=1e-12, atol=1e-12, msg=name)
    fused = torch.autograd.gradcheck(
        lambda x, w, b: causal_depthwise_conv(x, w, b, silu=True), tuple(parameters), eps=1e-6, atol=1e-8
    )
    assert fused


def test_ssd_scan_gradients_pass_gradcheck():
    # the within-chunk term has a written-out backward pass: check it against finite differences too
    inputs = [t.requires_grad_() for t in _scan_inputs(21, 1, seed=11, batch=1)]
    assert torch.autograd.gradcheck(lambda *args: ssd_scan(*args, chunk_size=8), inputs)


def test_ssd_scan_gradients_where_decays_reach_the_floor():
    # log decays below the floor (-80) are clipped before exp; their gradient is zero, as clamp's would be
    x, dt, _, B, C = _scan_inputs(32, 1, seed=12, batch=1)
    A = torch.full((HEADS,), -30.0, dtype=torch.float64)
    inputs = [t.requires_grad_() for t in (x, dt, A, B, C)]
    got = torch.autograd.grad(ssd_scan(*inputs, chunk_size=16).sum(), inputs)
    expected = torch.autograd.grad(ssd_recurrence(*inputs).sum(), inputs)
    for name, mine, reference in zip(["x", "dt", "A", "B", "C"], got, expected, strict=True):
        torch.testing.assert_close(mine, reference, rtol=1e-9, atol=1e-9, msg=name)


def _gated_rms_norm_by_autograd(x, z, weight, group_size, eps):
    # the norm's formula in plain differentiable operations (norm after gate, per group)
    grouped = (x * torch.nn.functional.silu(z)).unflatten(-1, (-1, group_size))
    return (grouped * torch.rsqrt(grouped.pow(2).mean(-1, keepdim=True) + eps)).flatten(-2) * weight


@pytest.mark.parametrize("group_size", [12, 4])
def test_gated_rms_norm_gradients_equal_autograd(group_size: int):
    torch.manual_seed(2)
    norm = GatedRMSNorm(12, group_size=group_size, dtype=torch.float64)
    torch.nn.init.normal_(norm.weight)
    x, z = (torch.randn(3, 5, 12, dtype=torch.float64, requires_grad=True) for _ in range(2))
    upstream = torch.randn(3, 5, 12, dtype=torch.float64)
    inputs = [x, z, norm.weight]
    got = torch.autograd.grad((norm(x, z) * upstream).sum(), inputs)
    expected_out = _gated_rms_norm_by_autograd(x, z, norm.weight, group_size, norm.eps)
    expected = torch.autograd.grad((expected_out * upstream).sum(), inputs)
    torch.testing.assert_close(norm(x, z), expected_out, rtol=1e-12, atol=1e-12)
    for name, mine, reference in zip(["x", "z", "weight"], got, expected, strict=True):
        torch.testing.assert_close(mine, reference, rtol=1e-10, atol=1e-10, msg=name)
    assert torch.autograd.gradcheck(norm, (x, z))


def test_gated_rms_norm_keeps_low_precision_inputs_dtype():
    norm = GatedRMSNorm(8, group_size=8, dtype=torch.bfloat16)
    x, z = (torch.randn(2, 3, 8, dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
    out = norm(x, z)
    out.float().sum().backward()
    assert out.dtype == torch.bfloat16
    assert x.grad.dtype == z.grad.dtype == norm.weight.grad.dtype == torch.bfloat16


def test_ssd_scan_groups_must_divide_heads():
    x, dt, A, B, C = _scan_inputs(8, 3, seed=0)
    with pytest.raises(ValueError, match="multiple of groups"):
        ssd_scan(x, dt, A, B, C, chunk_size=4)


def test_ssd_scan_carries_state_across_chunks():
    # guard against a scan that only works within a chunk: with no decay, the first input is still seen at the end
    x, dt, _, B, C = _scan_inputs(40, 1, seed=3, batch=1)
    A = torch.full((HEADS,), -1e-3, dtype=torch.float64)
    x_changed = x.clone()
    x_changed[:, 0] += 1.0
    before = ssd_scan(x, dt, A, B, C, chunk_size=16)
    after = ssd_scan(x_changed, dt, A, B, C, chunk_size=16)
    assert (after[:, -1] - before[:, -1]).abs().max() > 1e-3


def _mamba(dtype: torch.dtype, **kwargs) -> Mamba2:
    torch.manual_seed(0)
    defaults = {"d_state": 8, "headdim": 8, "chunk_size": 8, "use_kernels": False}
    return Mamba2(16, **{**defaults, **kwargs}, dtype=dtype).eval()


@pytest.mark.parametrize("ngroups", [1, 2])
def test_mamba2_is_causal(ngroups: int):
    block = _mamba(torch.float64, ngroups=ngroups)
    gen = torch.Generator().manual_seed(1)
    u = torch.randn(2, 29, 16, generator=gen, dtype=torch.float64)
    t = 13
    changed = u.clone()
    changed[:, t + 1 :] = torch.randn(2, 29 - t - 1, 16, generator=gen, dtype=torch.float64) * 5
    with torch.no_grad():
        y, y_changed = block(u), block(changed)
    assert torch.allclose(y[:, : t + 1], y_changed[:, : t + 1], atol=1e-12, rtol=0)
    # and the later outputs do see the change (the test would pass trivially otherwise)
    assert (y[:, t + 1 :] - y_changed[:, t + 1 :]).abs().max() > 1e-3
    # the output at t does depend on the input at t and before
    changed_now = u.clone()
    changed_now[:, t] += 1.0
    with torch.no_grad():
        assert (block(changed_now)[:, t] - y[:, t]).abs().max() > 1e-6


@pytest.mark.parametrize("length", [1, 7, 8, 21])
def test_mamba2_float32_forward_shapes(length: int):
    block = _mamba(torch.float32, expand=2)
    assert block.nheads == 4
    assert block.d_inner == 32
    u = torch.randn(3, length, 16)
    with torch.no_grad():
        y = block(u)
    assert y.shape == (3, length, 16)
    assert y.dtype == torch.float32
    assert torch.isfinite(y).all()


def test_mamba2_rejects_headdim_not_dividing_inner_width():
    with pytest.raises(ValueError, match="headdim"):
        Mamba2(10, headdim=8, expand=2)


@pytest.fixture
def fake_mamba_ssm(tmp_path, monkeypatch):
    """A stand-in ``mamba_ssm`` laid out like the real one: its ``__init__`` imports the compiled
    ``selective_scan_cuda`` unconditionally, and the Triton scan lives in ``ops/triton/ssd_combined.py``."""
    package = tmp_path / "mamba_ssm"
    (package / "ops" / "triton").mkdir(parents=True)
    (package / "__init__.py").write_text("import selective_scan_cuda\n")
    (package / "ops" / "__init__.py").write_text("")
    (package / "ops" / "triton" / "__init__.py").write_text("")
    kernel_source = "def mamba_chunk_scan_combined(*args, **kwargs):\n    pass\n"
    (package / "ops" / "triton" / "ssd_combined.py").write_text(kernel_source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "selective_scan_cuda", raising=False)  # a real one imported earlier
    for name in [n for n in sys.modules if n == "mamba_ssm" or n.startswith("mamba_ssm.")]:
        monkeypatch.delitem(sys.modules, name)
    mamba_ssm_kernels.cache_clear()
    yield package
    for name in [n for n in sys.modules if n == "mamba_ssm" or n.startswith("mamba_ssm.")]:
        del sys.modules[name]
    mamba_ssm_kernels.cache_clear()


def test_kernels_import_without_the_compiled_extension(fake_mamba_ssm):
    """A ``mamba_ssm`` built without its CUDA extension still provides the Triton scan; the stand-in module
    used for the import does not outlive it."""
    if importlib.util.find_spec("selective_scan_cuda") is not None:
        pytest.skip("the compiled selective_scan_cuda extension is installed here")
    kernel = mamba_ssm_kernels()
    assert kernel is not None
    assert kernel.__module__ == "mamba_ssm.ops.triton.ssd_combined"
    assert "selective_scan_cuda" not in sys.modules


def test_kernels_are_none_when_mamba_ssm_is_broken(fake_mamba_ssm):
    (fake_mamba_ssm / "ops" / "triton" / "ssd_combined.py").write_text("import triton_that_does_not_exist\n")
    assert mamba_ssm_kernels() is None
    assert "selective_scan_cuda" not in sys.modules


def test_kernels_broken_installation_is_a_warning(fake_mamba_ssm, caplog):
    (fake_mamba_ssm / "ops" / "triton" / "ssd_combined.py").write_text("import triton_that_does_not_exist\n")
    with caplog.at_level(logging.WARNING, logger="panfoma_sc.nn.ssd"):
        assert mamba_ssm_kernels() is None
    assert "mamba_ssm is installed but its Triton scan does not import" in caplog.text
    assert "triton_that_does_not_exist" in caplog.text


def test_no_mamba_ssm_is_no_warning(monkeypatch, caplog):
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args):
        return None if name == "mamba_ssm" else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    mamba_ssm_kernels.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="panfoma_sc.nn.ssd"):
            assert mamba_ssm_kernels() is None
    finally:
        mamba_ssm_kernels.cache_clear()
    assert caplog.text == ""


def test_a_compiled_extension_that_does_not_load_does_not_hide_the_scan(fake_mamba_ssm):
    """A ``selective_scan_cuda`` built for another torch fails to load; the Triton scan does not need it."""
    extension = fake_mamba_ssm.parent / "selective_scan_cuda.py"
    extension.write_text("raise ImportError('selective_scan_cuda.so: undefined symbol: _ZN3c10')\n")
    kernel = mamba_ssm_kernels()
    assert kernel is not None
    assert kernel.__module__ == "mamba_ssm.ops.triton.ssd_combined"
    assert "selective_scan_cuda" not in sys.modules


@pytest.fixture
def fresh_kernel_state(monkeypatch):
    monkeypatch.setattr(ssd, "_kernel_failure", [])
    monkeypatch.delenv(ssd.KERNELS_SWITCH, raising=False)


def test_usable_kernel_only_on_cuda_when_switched_on_and_not_failed(fresh_kernel_state, monkeypatch):
    def kernel(*args, **kwargs):
        return None

    monkeypatch.setattr(ssd, "mamba_ssm_kernels", lambda: kernel)
    assert ssd._usable_kernel("cpu") is None
    assert ssd._usable_kernel("cuda") is kernel
    monkeypatch.setenv(ssd.KERNELS_SWITCH, "0")
    assert ssd._usable_kernel("cuda") is None
    monkeypatch.setenv(ssd.KERNELS_SWITCH, "require")
    assert ssd._usable_kernel("cuda") is kernel
    ssd._kernel_failure.append("CompilationError: ptxas")
    assert ssd._usable_kernel("cuda") is None


def test_a_failing_kernel_falls_back_to_the_pytorch_scan_once(fresh_kernel_state, monkeypatch):
    calls = []

    def failing_kernel(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("PTXASError: Feature '.bf16' requires .target sm_80 or higher\nmore lines")

    # as on CUDA: the kernel is offered until it has failed once
    monkeypatch.setattr(ssd, "_usable_kernel", lambda device_type: None if ssd._kernel_failure else failing_kernel)
    torch.manual_seed(0)
    layer = Mamba2(d_model=16, headdim=8, d_state=4, chunk_size=8)
    u = torch.randn(2, 20, 16)
    with pytest.warns(RuntimeWarning, match=r"Triton scan failed on this GPU \(RuntimeError: PTXASError: Feature"):
        fallback = layer(u)
    layer.use_kernels = False
    expected = layer(u)
    torch.testing.assert_close(fallback, expected, rtol=0, atol=0)
    layer.use_kernels = True
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = layer(u)
    assert len(calls) == 1
    torch.testing.assert_close(again, expected, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("error", "switch"),
    [
        (RuntimeError("CUDA error: an illegal memory access was encountered"), ""),  # the GPU is unusable now
        (RuntimeError("PTXASError: Feature '.bf16' requires .target sm_80"), "require"),  # kernel tests, benchmarks
    ],
)
def test_kernel_failures_that_must_not_fall_back_are_raised(fresh_kernel_state, monkeypatch, error, switch):
    def kernel(*args, **kwargs):
        raise error

    monkeypatch.setenv(ssd.KERNELS_SWITCH, switch)
    with pytest.raises(RuntimeError, match=str(error)[:20]):
        ssd._run_kernel(kernel)
    assert ssd._kernel_failure == []


def test_the_kernel_switch_values(monkeypatch):
    for value, expected in [("", "auto"), ("0", "off"), ("OFF", "off"), ("false", "off"), ("require", "require")]:
        monkeypatch.setenv(ssd.KERNELS_SWITCH, value)
        assert ssd._kernels_switch() == expected


def test_running_out_of_gpu_memory_in_the_kernel_is_raised(fresh_kernel_state):
    def kernel(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(torch.cuda.OutOfMemoryError):
        ssd._run_kernel(kernel)
    assert ssd._kernel_failure == []
