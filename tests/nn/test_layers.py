"""The encoder block's feed-forward network: GELU and the second Linear fused, as the plain modules compute them."""

from __future__ import annotations

import contextlib

import pytest
import torch

from panfoma_sc.nn import PanFoMaConfig
from panfoma_sc.nn.layers import EncoderBlock, _GeluLinear, sort_by_global_score
from panfoma_sc.nn.precision import float32_region

CONFIG = PanFoMaConfig(vocab_size=40, d_model=16, n_heads=4, n_genes=32, n_chunks=4, dropout=0.0)


def _plain_block(block: EncoderBlock, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The block as nn.Sequential computes it, autograd keeping every intermediate."""
    seqs, steps, width = x.shape
    q, k, v = block.qkv(block.norm_attn(x)).view(seqs, steps, 3, block.n_heads, -1).permute(2, 0, 3, 1, 4)
    attn = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :])
    x = x + block.attn_out(attn.transpose(1, 2).reshape(seqs, steps, width))
    return x + block.ffn(block.norm_ffn(x))


def test_encoder_block_equals_the_plain_modules_with_their_gradients():
    torch.manual_seed(0)
    block = EncoderBlock(CONFIG, dtype=torch.float64).train()
    x = torch.randn(5, 9, CONFIG.d_model, dtype=torch.float64, requires_grad=True)
    keep = torch.ones(5, 9, dtype=torch.bool)
    keep[0, 6:] = False
    upstream = torch.randn(5, 9, CONFIG.d_model, dtype=torch.float64)
    parameters = [x, *block.parameters()]
    fused = block(x, keep)
    plain = _plain_block(block, x, keep)
    assert torch.equal(fused, plain)  # the forward pass is the same arithmetic
    got = torch.autograd.grad((fused * upstream).sum(), parameters)
    expected = torch.autograd.grad((plain * upstream).sum(), parameters)
    names = ["x", *(name for name, _ in block.named_parameters())]
    for name, mine, reference in zip(names, got, expected, strict=True):
        torch.testing.assert_close(mine, reference, rtol=1e-12, atol=1e-12, msg=name)


@pytest.mark.parametrize("with_bias", [True, False])
def test_gelu_linear_passes_gradcheck(with_bias: bool):
    torch.manual_seed(1)
    hidden = torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(4, dtype=torch.float64, requires_grad=True) if with_bias else None
    inputs = (hidden, weight, bias)
    assert torch.autograd.gradcheck(_GeluLinear.apply, inputs, eps=1e-6, atol=1e-8)


def test_gelu_linear_keeps_only_its_input():
    """What autograd keeps for the backward pass: the hidden activations and the weight, not the GELU's output."""
    hidden = torch.randn(7, 24, requires_grad=True)
    linear = torch.nn.Linear(24, 8)
    kept = []

    def pack(tensor):
        kept.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        _GeluLinear.apply(hidden, linear.weight, linear.bias)
    assert len(kept) == 2
    assert kept[0] is hidden
    assert kept[1] is linear.weight


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 autocast runs on CUDA only in this package")
@pytest.mark.gpu
def test_gelu_linear_under_autocast_matches_the_plain_modules():
    torch.manual_seed(2)
    hidden = torch.randn(64, 32, device="cuda", requires_grad=True)
    linear = torch.nn.Linear(32, 16, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        fused = _GeluLinear.apply(hidden @ torch.eye(32, device="cuda"), linear.weight, linear.bias)
        plain = linear(torch.nn.functional.gelu(hidden @ torch.eye(32, device="cuda")))
    assert fused.dtype == plain.dtype == torch.bfloat16
    torch.testing.assert_close(fused, plain)
    got = torch.autograd.grad(fused.float().sum(), [hidden, linear.weight, linear.bias])
    expected = torch.autograd.grad(plain.float().sum(), [hidden, linear.weight, linear.bias])
    for mine, reference in zip(got, expected, strict=True):
        assert mine.dtype == reference.dtype
        torch.testing.assert_close(mine, reference, rtol=2e-2, atol=2e-2)


def _scores_with_a_shared_offset(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gene states whose scores share a large offset, as a trained model's do (about 120 +- 9 for panfoma-tiny)."""
    generator = torch.Generator().manual_seed(seed)
    batch, genes, width = 3, 256, 64
    h_global = torch.randn(batch, width, generator=generator)
    shared = h_global / h_global.norm(dim=1, keepdim=True) ** 2 * 120.0  # dot(shared, h_global) = 120
    states = shared[:, None, :] + 0.3 * torch.randn(batch, genes, width, generator=generator)
    padding = torch.zeros(batch, genes, dtype=torch.bool)
    padding[1, 200:] = True
    return states, h_global, padding


def test_gene_order_under_bf16_autocast_is_the_float32_order():
    states, h_global, padding = _scores_with_a_shared_offset()
    reference_sorted, reference_order = sort_by_global_score(states, h_global, padding)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        sorted_states, order = sort_by_global_score(states, h_global, padding)
    assert torch.equal(order, reference_order)
    assert torch.equal(sorted_states, reference_sorted)
    assert (order[1, 200:] >= 200).all()  # padding last
    # the scores keep float32 resolution: a bf16 product of the same inputs ties most genes
    bf16_scores = torch.einsum("bnd,bd->bn", states.bfloat16(), h_global.bfloat16())
    assert bf16_scores[0].unique().numel() < 64 < 250 < (states[0] @ h_global[0]).unique().numel()


def test_gene_order_of_bf16_states_is_sorted_by_their_float32_scores():
    states, h_global, padding = _scores_with_a_shared_offset(1)
    states, h_global = states.bfloat16(), h_global.bfloat16()  # what autocast's layers hand the sort
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, order = sort_by_global_score(states, h_global, padding)
    scores = torch.einsum("bnd,bd->bn", states.double(), h_global.double()).masked_fill(padding, -torch.inf)
    assert torch.equal(order, torch.argsort(scores, dim=1, descending=True, stable=True))


def test_float32_region_switches_autocast_off_where_it_exists():
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with float32_region(torch.device("cpu")):
            assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    # no autocast for this device type on every supported torch: nothing to switch
    assert isinstance(float32_region(torch.device("meta")), contextlib.nullcontext)
