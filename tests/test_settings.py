"""``pf.settings``: how ``None`` / ``"auto"`` defaults resolve for a device."""

from __future__ import annotations

import pytest

from panfoma_sc._settings import Settings


def test_prefetch_defaults_to_a_thread_on_gpus_only():
    settings = Settings()
    assert settings.prefetch is None
    assert settings.resolve_prefetch(None, "cpu") == 0
    assert settings.resolve_prefetch(None, "cuda:1") == 1
    assert settings.resolve_prefetch(None, "mps") == 1
    assert settings.resolve_prefetch(2, "cpu") == 2
    assert Settings(prefetch=3).resolve_prefetch(None, "cpu") == 3
    assert Settings(prefetch=3).resolve_prefetch(0, "cuda") == 0


def test_precision_resolves_to_fp32_off_cuda_and_refuses_bf16_there():
    settings = Settings()
    assert settings.resolve_precision(None, "cpu") == "fp32"
    assert settings.resolve_precision("fp32", "cuda") == "fp32"
    assert settings.resolve_precision("bf16", "cuda:0") == "bf16"
    with pytest.raises(ValueError, match=r"runs on CUDA only, but the device is 'mps'"):
        settings.resolve_precision("bf16", "mps")
    with pytest.raises(ValueError, match="precision must be one of"):
        Settings(precision="half").resolve_precision(None, "cuda")
