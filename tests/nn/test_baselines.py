"""The equal-size baselines used by the performance benchmarks build, run, train and ignore padding."""

from __future__ import annotations

import pytest
import torch

from panfoma_sc.nn import PanFoMa, PanFoMaConfig
from panfoma_sc.nn.baselines import BASELINES, build_baseline

CONFIG = PanFoMaConfig(
    vocab_size=50,
    d_model=32,
    n_heads=4,
    encoder_repeats=2,
    decoder_layers=2,
    n_genes=32,
    n_chunks=4,
    d_state=8,
    headdim=16,
    ssd_chunk_size=8,
)


def _batch(n_real: tuple[int, ...], *, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(B, 4, 8)`` tokens, cell ``b`` with ``n_real[b]`` real genes first and garbage bins at padding."""
    gen = torch.Generator().manual_seed(seed)
    shape = (len(n_real), CONFIG.n_chunks, CONFIG.n_genes // CONFIG.n_chunks)
    ids = torch.randint(2, CONFIG.vocab_size, shape, generator=gen)
    bins = torch.randint(0, CONFIG.n_bins, shape, generator=gen)
    padding = (torch.arange(CONFIG.n_genes) >= torch.tensor(n_real)[:, None]).reshape(shape)
    return ids.masked_fill(padding, 0), bins, padding


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_baseline_forward_shapes_and_padding(name: str):
    torch.manual_seed(0)
    model = build_baseline(name, CONFIG).eval()
    ids, bins, padding = _batch((32, 20))
    with torch.inference_mode():
        out = model(ids, bins, padding)
        garbage = model(ids, torch.where(padding, (bins + 7) % CONFIG.n_bins, bins), padding)
    assert out.cell_embedding.shape == (2, CONFIG.d_model)
    assert out.gene_states.shape == (2, CONFIG.n_genes, CONFIG.d_model)
    assert torch.isfinite(out.cell_embedding).all()
    torch.testing.assert_close(garbage.cell_embedding, out.cell_embedding, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_baseline_trains_and_matches_panfoma_width(name: str):
    torch.manual_seed(0)
    model = build_baseline(name, CONFIG)
    model(*_batch((32, 32))).cell_embedding.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())
    # same parts and sizes: parameter counts within a factor of ~2 of PanFoMa's network
    panfoma = PanFoMa(CONFIG).n_parameters()
    assert 0.3 < sum(p.numel() for p in model.parameters()) / panfoma < 3


def test_unknown_baseline_is_refused():
    with pytest.raises(ValueError, match="full-attention"):
        build_baseline("lstm", CONFIG)
