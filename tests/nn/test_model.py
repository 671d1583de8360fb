"""The PanFoMa network: shapes, padding and permutation invariance, gradient flow, named configs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from panfoma_sc.nn import CONFIGS, PanFoMa, PanFoMaConfig, masked_bin_loss
from panfoma_sc.nn.layers import take_tokens

TINY = PanFoMaConfig(
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
PAD = 0
ATOL = 1e-5
#: the v1 read-out and MVC head, the v2 ones (token-mean path into the cell embedding, bilinear MVC), and v2.1's
#: token mean over the expressed genes only
VARIANTS = {
    "v1": TINY,
    "tokens+bilinear": TINY.replace(cell_readout="decoder+tokens", mvc_head="bilinear"),
    "expressed+bilinear": TINY.replace(cell_readout="decoder+expressed", mvc_head="bilinear"),
}


@pytest.fixture(scope="module", params=list(VARIANTS))
def model(request) -> PanFoMa:
    torch.manual_seed(0)
    net = PanFoMa(VARIANTS[request.param]).eval()
    if request.param != "v1":  # a fresh token read-out ignores the decoder (tested below); give it trained-like weights
        with torch.no_grad():
            net.cell_projection.weight.normal_(0.0, 0.1)
    return net


def _cell(n_real: int, chunks: int, length: int, *, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One cell ``(1, C, M)``: ``n_real`` distinct genes dealt round-robin into chunks, padding after them."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.full((chunks * length,), PAD, dtype=torch.long)
    bins = torch.zeros(chunks * length, dtype=torch.long)
    ids[:n_real] = torch.randperm(TINY.vocab_size - 2, generator=gen)[:n_real] + 2  # skip <pad>, <cls>
    bins[:n_real] = torch.randint(0, TINY.n_bins, (n_real,), generator=gen)
    padding = torch.arange(chunks * length) >= n_real

    def deal(a: torch.Tensor) -> torch.Tensor:
        return a.reshape(length, chunks).T.unsqueeze(0).contiguous()

    return deal(ids), deal(bins), deal(padding)


def _pad_to(tensors, length: int, *, seed: int):
    """Append padding positions at the end of every chunk, with garbage bins there."""
    ids, bins, padding = tensors
    extra = length - ids.shape[-1]
    gen = torch.Generator().manual_seed(seed)
    garbage_bins = torch.randint(0, TINY.n_bins + 1, (*ids.shape[:-1], extra), generator=gen)
    return (
        torch.cat([ids, torch.full((*ids.shape[:-1], extra), PAD, dtype=torch.long)], -1),
        torch.cat([bins, garbage_bins], -1),
        torch.cat([padding, torch.ones(*ids.shape[:-1], extra, dtype=torch.bool)], -1),
    )


def _real_states(gene_states: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
    """Gene states at real positions, in chunk-major token order: ``(n_real, D)`` of one cell."""
    return gene_states[~padding.reshape(-1)]


def test_output_shapes(model: PanFoMa):
    ids, bins, padding = (torch.cat(t) for t in zip(_cell(32, 4, 8, seed=1), _cell(20, 4, 8, seed=2), strict=True))
    with torch.no_grad():
        out = model(ids, bins, padding)
    assert out.cell_embedding.shape == (2, TINY.d_model)
    assert out.gene_states.shape == (2, 32, TINY.d_model)
    assert out.h_global.shape == (2, TINY.d_model)
    assert out.order.shape == (2, 32)
    assert model.value_logits(out).shape == (2, 32, TINY.n_bins)
    assert model.mvc_logits(out, ids).shape == (2, 32, TINY.n_bins)
    # padding goes last in the dynamic order
    for cell in range(2):
        n_real = int((~padding[cell]).sum())
        assert not padding[cell].reshape(-1)[out.order[cell, :n_real]].any()
    assert torch.isfinite(out.cell_embedding).all()


def test_padding_does_not_change_a_cell(model: PanFoMa):
    cell_a = _cell(13, 4, 4, seed=3)  # 13 genes in chunks of 4: 3 padding positions already
    cell_b = _cell(30, 4, 8, seed=4)
    with torch.no_grad():
        alone = model(*cell_a)
        padded_a = _pad_to(cell_a, 8, seed=5)
        batch = tuple(torch.cat(t) for t in zip(padded_a, cell_b, strict=True))
        together = model(*batch)
    torch.testing.assert_close(together.cell_embedding[0], alone.cell_embedding[0], atol=ATOL, rtol=0)
    torch.testing.assert_close(
        _real_states(together.gene_states[0], padded_a[2][0]),
        _real_states(alone.gene_states[0], cell_a[2][0]),
        atol=ATOL,
        rtol=0,
    )


def test_garbage_at_padding_does_not_change_output(model: PanFoMa):
    ids, bins, padding = (torch.cat(t) for t in zip(_cell(11, 4, 5, seed=6), _cell(17, 4, 5, seed=7), strict=True))
    gen = torch.Generator().manual_seed(8)
    garbage_ids = ids.masked_scatter(padding, torch.randint(1, TINY.vocab_size, ids.shape, generator=gen)[padding])
    garbage_bins = bins.masked_scatter(padding, torch.randint(0, TINY.n_bins + 1, ids.shape, generator=gen)[padding])
    assert (garbage_ids != ids).any()
    with torch.no_grad():
        clean = model(ids, bins, padding)
        dirty = model(garbage_ids, garbage_bins, padding)
    torch.testing.assert_close(dirty.cell_embedding, clean.cell_embedding, atol=ATOL, rtol=0)
    for cell in range(2):
        torch.testing.assert_close(
            _real_states(dirty.gene_states[cell], padding[cell]),
            _real_states(clean.gene_states[cell], padding[cell]),
            atol=ATOL,
            rtol=0,
        )


def test_cell_embedding_invariant_to_order_within_chunks(model: PanFoMa):
    ids, bins, padding = _cell(30, 4, 8, seed=9)
    gen = torch.Generator().manual_seed(10)
    perm = torch.stack([torch.randperm(8, generator=gen) for _ in range(4)]).unsqueeze(0)  # (1, C, M)
    assert not torch.equal(perm, torch.arange(8).expand_as(perm))
    with torch.no_grad():
        before = model(ids, bins, padding)
        after = model(ids.gather(2, perm), bins.gather(2, perm), padding.gather(2, perm))
    torch.testing.assert_close(after.cell_embedding, before.cell_embedding, atol=ATOL, rtol=0)
    # gene states follow their genes
    states_before = before.gene_states.view(1, 4, 8, -1).gather(2, perm.unsqueeze(-1).expand(-1, -1, -1, TINY.d_model))
    torch.testing.assert_close(after.gene_states.view(1, 4, 8, -1), states_before, atol=ATOL, rtol=0)


def test_cell_embedding_depends_on_values(model: PanFoMa):
    ids, bins, padding = _cell(30, 4, 8, seed=11)
    with torch.no_grad():
        before = model(ids, bins, padding).cell_embedding
        after = model(ids, (bins + 7) % TINY.n_bins, padding).cell_embedding
    assert (after - before).abs().max() > 1e-4


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_gradient_reaches_every_parameter(variant: str):
    torch.manual_seed(0)
    net = PanFoMa(VARIANTS[variant]).train()
    ids, bins, padding = (torch.cat(t) for t in zip(_cell(32, 4, 8, seed=12), _cell(25, 4, 8, seed=13), strict=True))
    gen = torch.Generator().manual_seed(14)
    loss_mask = (torch.rand(ids.shape, generator=gen) < 0.3) & ~padding
    masked_bins = bins.masked_fill(loss_mask, net.mask_bin)
    out = net(ids, masked_bins, padding)
    targets = bins.reshape(2, -1)
    flat_mask = loss_mask.reshape(2, -1)
    loss = masked_bin_loss(net.value_logits(out), targets, flat_mask) + masked_bin_loss(
        net.mvc_logits(out, ids), targets, flat_mask
    )
    loss.backward()
    no_grad = [name for name, p in net.named_parameters() if p.grad is None]
    zero_grad = [name for name, p in net.named_parameters() if p.grad is not None and not p.grad.abs().gt(0).any()]
    assert not no_grad, f"parameters without a gradient: {no_grad}"
    assert not zero_grad, f"parameters with an all-zero gradient: {zero_grad}"


def test_masked_bin_loss_without_masked_positions_is_zero():
    logits = torch.randn(2, 5, TINY.n_bins, requires_grad=True)
    loss = masked_bin_loss(logits, torch.zeros(2, 5, dtype=torch.long), torch.zeros(2, 5, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()  # still part of the graph
    assert logits.grad is not None


def test_masked_bin_loss_is_the_mean_cross_entropy_of_the_masked_positions_only():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, TINY.n_bins, generator=generator, requires_grad=True)
    targets = torch.randint(0, TINY.n_bins, (3, 7), generator=generator)
    mask = torch.rand(3, 7, generator=generator) < 0.4
    targets[~mask] = TINY.n_bins + 5  # not a class: positions outside the mask are never read
    loss = masked_bin_loss(logits, targets, mask)
    log_probs = torch.log_softmax(logits.detach().double(), dim=-1)
    expected = -log_probs[mask].gather(1, targets[mask].unsqueeze(1)).mean()
    assert torch.isclose(loss.double(), expected, rtol=1e-6)
    loss.backward()
    assert logits.grad[~mask].abs().max() == 0.0  # no gradient reaches unmasked positions
    assert logits.grad[mask].abs().max() > 0.0


def test_named_configs_build():
    counts = {}
    for name, config in CONFIGS.items():
        net = PanFoMa(config.replace(vocab_size=21303))
        counts[name] = net.n_parameters()
        print(f"{name}: {counts[name]:,} parameters (vocab_size=21303)")
    assert set(counts) == {"panfoma-tiny", "panfoma-base"}
    assert counts["panfoma-tiny"] < counts["panfoma-base"]


def test_config_validation_and_round_trip():
    with pytest.raises(ValueError, match="n_heads"):
        PanFoMaConfig(d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="n_chunks"):
        PanFoMaConfig(n_genes=30, n_chunks=4)
    assert PanFoMaConfig.from_dict(TINY.to_dict()) == TINY
    with pytest.raises(ValueError, match="upgrade"):
        PanFoMaConfig.from_dict({**TINY.to_dict(), "new_field": 1})
    with pytest.raises(ValueError, match="cell_readout"):
        TINY.replace(cell_readout="tokens")
    with pytest.raises(ValueError, match="mvc_head"):
        TINY.replace(mvc_head="mlp")
    # a v1 checkpoint's config has neither field: it loads as the v1 read-out and head
    v1 = {k: v for k, v in TINY.to_dict().items() if k not in ("cell_readout", "mvc_head")}
    assert PanFoMaConfig.from_dict(v1).cell_readout == "decoder"
    assert PanFoMaConfig.from_dict(v1).mvc_head == "concat"


def test_token_readout_starts_as_the_mean_gene_embedding():
    """A fresh "decoder+tokens" read-out is the normalized mean gene embedding alone: no chunk or decoder effect."""
    torch.manual_seed(0)
    net = PanFoMa(VARIANTS["tokens+bilinear"]).eval()
    ids, bins, padding = _cell(30, 4, 8, seed=15)
    perm = torch.randperm(32, generator=torch.Generator().manual_seed(16))
    shuffled = [t.reshape(1, -1)[:, perm].reshape(1, 4, 8) for t in (ids, bins, padding)]
    with torch.no_grad():
        out = net(ids, bins, padding).cell_embedding
        moved = net(*shuffled).cell_embedding  # genes change chunks: the encoder sees other neighbours
        other_values = net(ids, (bins + 7) % TINY.n_bins, padding).cell_embedding
        expected = net.cell_norm(net.gene_mean_norm(net.embedding.gene(ids[~padding]).mean(0)))
    torch.testing.assert_close(out[0], expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(moved, out, atol=ATOL, rtol=0)
    torch.testing.assert_close(other_values, out, atol=ATOL, rtol=0)
    # once the decoder part of the projection is non-zero, the decoder (and with it the values) matters
    with torch.no_grad():
        net.cell_projection.weight[:, : 2 * TINY.d_model].normal_(0.0, 0.1)
        assert (
            net(ids, (bins + 7) % TINY.n_bins, padding).cell_embedding - net(ids, bins, padding).cell_embedding
        ).abs().max() > 1e-4


def test_expressed_readout_averages_the_expressed_genes_only():
    """ "decoder+expressed" leaves unexpressed tokens (bin 0) out of the gene mean; masked values count as expressed."""
    torch.manual_seed(0)
    expressed_net = PanFoMa(VARIANTS["expressed+bilinear"]).eval()
    all_net = PanFoMa(VARIANTS["tokens+bilinear"]).eval()
    all_net.load_state_dict(expressed_net.state_dict())
    ids, bins, padding = _cell(30, 4, 8, seed=17)
    bins = bins.clamp(min=1)
    bins[0, :, :3] = 0  # three unexpressed genes per chunk, as the tokenizer adds to a cell with few expressed genes
    bins[0, 0, 3] = expressed_net.mask_bin
    other_unexpressed = ids.clone()
    other_unexpressed[bins == 0] = (other_unexpressed[bins == 0] + 5) % (TINY.vocab_size - 2) + 2
    expressed = ~padding & (bins != 0)
    with torch.no_grad():
        out = expressed_net(ids, bins, padding).cell_embedding
        swapped = expressed_net(other_unexpressed, bins, padding).cell_embedding
        token_mean = expressed_net.embedding.gene(ids[expressed]).mean(0)
        expected = expressed_net.cell_norm(expressed_net.gene_mean_norm(token_mean))
        all_tokens = all_net(ids, bins, padding).cell_embedding
        all_swapped = all_net(other_unexpressed, bins, padding).cell_embedding
    torch.testing.assert_close(out[0], expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(swapped, out, atol=ATOL, rtol=0)  # which genes fill the cell does not matter
    assert (all_swapped - all_tokens).abs().max() > 1e-3  # it does for the all-token mean


def test_bilinear_mvc_head_needs_the_cell_for_cell_specific_predictions():
    from panfoma_sc.nn.model import BilinearMVCHead

    torch.manual_seed(0)
    head = BilinearMVCHead(TINY)
    genes = torch.randn(1, 5, TINY.d_model).expand(3, -1, -1)
    cells = torch.randn(3, TINY.d_model)
    logits = head(cells, genes)
    assert logits.shape == (3, 5, TINY.n_bins)
    assert (logits[0] - logits[1]).abs().max() > 1e-3  # different cells, different predictions
    with torch.no_grad():
        head.cell.weight.zero_()
        head.cell.bias.zero_()
    blind = head(cells, genes)
    torch.testing.assert_close(blind[0], blind[1])  # without the cell term only the gene prior is left


def test_batch_discriminator_trains_itself_and_the_encoder_on_separate_bounded_losses():
    from panfoma_sc.nn import BatchDiscriminator

    torch.manual_seed(0)
    discriminator = BatchDiscriminator(8, 3)
    embedding = torch.randn(12, 8, requires_grad=True)
    batches = torch.arange(12) % 3
    own, confusion = discriminator.losses(embedding, batches)
    torch.testing.assert_close(own, F.cross_entropy(discriminator(embedding), batches))
    own.backward(retain_graph=True)
    assert embedding.grad is None  # the discriminator's loss never reaches the encoder
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in discriminator.parameters())
    discriminator.zero_grad()
    confusion.backward()
    assert all(p.grad is None or not p.grad.any() for p in discriminator.parameters())  # nor the encoder's it
    assert embedding.grad.abs().sum() > 0
    # the encoder's loss is zero at a uniform prediction, positive elsewhere, and bounded: it reaches its minimum at
    # the decision boundary instead of rewarding a confident wrong batch as a reversed cross-entropy does
    with torch.no_grad():
        discriminator.net[-1].weight.zero_()
        discriminator.net[-1].bias.zero_()
    assert discriminator.losses(embedding, batches)[1].abs() < 1e-6
    with torch.no_grad():
        discriminator.net[-1].bias.copy_(torch.tensor([10.0, 0.0, 0.0]))
    assert discriminator.losses(embedding, batches)[1] > 2


def test_token_readout_reads_feature_tokens_of_other_modalities():
    """With protein/ATAC tokens added (ids >= vocab_size), the token read-out averages their vectors too."""
    from panfoma_sc.nn.multimodal import add_feature_tokens

    torch.manual_seed(0)
    net = add_feature_tokens(PanFoMa(VARIANTS["tokens+bilinear"]), torch.tensor([0, 0, 1])).eval()
    ids, bins, padding = _cell(12, 4, 4, seed=17)
    ids = ids.masked_fill(~padding & (torch.arange(16).reshape(1, 4, 4) % 5 == 0), TINY.vocab_size + 2)
    with torch.no_grad():
        out = net(ids, bins, padding).cell_embedding
        expected = net.cell_norm(net.gene_mean_norm(net.embedding.token_vectors(ids[~padding]).mean(0)))
    assert (ids >= TINY.vocab_size).any()
    torch.testing.assert_close(out[0], expected, atol=ATOL, rtol=0)


def test_take_tokens_reorders_each_sequence_like_gather():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 7, 5, generator=gen, requires_grad=True)
    index = torch.stack([torch.randperm(7, generator=gen) for _ in range(3)])
    got = take_tokens(x, index)
    expected = x.gather(1, index.unsqueeze(-1).expand_as(x))
    assert torch.equal(got, expected)
    weights = torch.randn(3, 7, 5, generator=gen)
    (got * weights).sum().backward()
    grad = x.grad.clone()
    x.grad = None
    (expected * weights).sum().backward()
    torch.testing.assert_close(grad, x.grad)
