"""Activation checkpointing: the same outputs and gradients, far fewer activations kept for the backward pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from panfoma_sc.nn import PanFoMa, PanFoMaConfig

CONFIG = PanFoMaConfig(
    vocab_size=60,
    d_model=32,
    n_heads=4,
    encoder_repeats=3,
    decoder_layers=2,
    n_genes=64,
    n_chunks=4,
    d_state=8,
    headdim=16,
    ssd_chunk_size=8,
    dropout=0.1,  # the recomputed forward must draw the same dropout masks
    cell_readout="decoder+expressed",
    mvc_head="bilinear",
)


def _batch(cells: int = 6):
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(2, CONFIG.vocab_size, (cells, 4, 16), generator=generator)
    bins = torch.randint(0, CONFIG.n_bins, (cells, 4, 16), generator=generator)
    padding = torch.zeros(cells, 4, 16, dtype=torch.bool)
    padding[0, :, 12:] = True  # one shorter cell
    return ids, bins, padding


def _loss_and_grads(checkpointing: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
    torch.manual_seed(0)
    model = PanFoMa(CONFIG).train()
    model.activation_checkpointing = checkpointing
    saved_bytes = 0

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal saved_bytes
        saved_bytes += tensor.numel() * tensor.element_size()
        return tensor

    torch.manual_seed(1)
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        output = model(*_batch())
        loss = model.value_logits(output).square().mean() + output.cell_embedding.square().mean()
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads, saved_bytes


def test_checkpointing_keeps_the_loss_and_gradients_and_saves_activations():
    loss, grads, saved = _loss_and_grads(False)
    loss_ckpt, grads_ckpt, saved_ckpt = _loss_and_grads(True)
    torch.testing.assert_close(loss_ckpt, loss, rtol=0, atol=0)
    assert grads.keys() == grads_ckpt.keys()
    for name in grads:
        torch.testing.assert_close(grads_ckpt[name], grads[name], rtol=1e-6, atol=1e-7, msg=name)
    assert saved_ckpt < 0.2 * saved, (saved_ckpt, saved)  # 0.06 measured


def test_inference_is_unaffected():
    torch.manual_seed(0)
    model = PanFoMa(CONFIG).eval()
    with torch.no_grad():
        plain = model(*_batch()).cell_embedding
        model.activation_checkpointing = True
        checkpointed = model(*_batch()).cell_embedding
    torch.testing.assert_close(checkpointed, plain, rtol=0, atol=0)
    assert "activation_checkpointing" not in str(model.state_dict().keys())


def test_fine_tuning_networks_follow_the_setting():
    import panfoma_sc as pf
    from panfoma_sc.train._finetune import _fresh_network

    model = pf.models.load("panfoma-tiny")
    assert not _fresh_network(model, "cpu").activation_checkpointing
    try:
        pf.settings.activation_checkpointing = True
        assert _fresh_network(model, "cpu").activation_checkpointing
    finally:
        pf.settings.activation_checkpointing = False


def test_pretraining_resumes_exactly_with_checkpointing_switched_on(tmp_path):
    """A run may resume with checkpointing on (it changes memory, not arithmetic) and ends bit-identical."""
    import scanpy as sc

    from panfoma_sc.train import TrainingConfig, build_vocabulary, pretrain

    adata = sc.datasets.pbmc68k_reduced().raw.to_adata()[:96].copy()
    path = tmp_path / "cells.h5ad"
    adata.write_h5ad(path)
    vocab = build_vocabulary([path], min_cells=1)
    overrides = {"d_model": 32, "n_heads": 4, "encoder_repeats": 2, "decoder_layers": 2, "d_state": 8}
    overrides |= {"headdim": 16, "ssd_chunk_size": 16}
    settings = {"model_overrides": overrides, "n_genes": 32, "batch_size": 16, "max_steps": 4, "warmup_steps": 1}
    pretrain([path], tmp_path / "a", vocab=vocab, config=TrainingConfig(**settings), progress=False)
    pretrain([path], tmp_path / "b", vocab=vocab, config=TrainingConfig(**settings, stop_after=2), progress=False)
    resumed = TrainingConfig(**settings, activation_checkpointing=True)
    assert pretrain([path], tmp_path / "b", vocab=vocab, config=resumed, progress=False)["finished"]
    straight, interrupted = (load_file(tmp_path / run / "model.safetensors") for run in ("a", "b"))
    for key in straight:
        np.testing.assert_array_equal(interrupted[key], straight[key], err_msg=key)
    with pytest.raises(ValueError, match=r"activation_checkpointing must be None, True or False"):
        TrainingConfig(activation_checkpointing="yes")


def test_pretrain_cli_flag_is_recorded(tmp_path):
    import json

    import scanpy as sc

    from panfoma_sc.cli import EXIT_OK, main

    path = tmp_path / "cells.h5ad"
    sc.datasets.pbmc68k_reduced().raw.to_adata()[:64].copy().write_h5ad(path)
    args = ["pretrain", str(path), "--out", str(tmp_path / "run"), "--steps", "1", "--warmup", "0", "--quiet"]
    args += ["--batch-size", "8", "--n-genes", "32", "--min-cells", "1", "--activation-checkpointing"]
    assert main(args) == EXIT_OK
    assert json.loads((tmp_path / "run" / "run.json").read_text())["config"]["activation_checkpointing"] is True
