"""``pf.settings``: how ``None`` / ``"auto"`` defaults resolve for a device."""

from __future__ import annotations

from pathlib import Path

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
        settings.resolve_precision("half", "cuda")
    with pytest.raises(ValueError, match=r"pf.settings.precision='half': use one of"):
        Settings(precision="half")


def test_auto_precision_is_bf16_only_on_gpus_with_native_bf16(monkeypatch):
    """A T4 or V100 (compute capability 7.x) emulates bf16: slower than float32, and mamba_ssm's Triton scan does not
    compile for it there. torch.cuda.is_bf16_supported() says yes on them; the capability of the device asked for
    decides."""
    import torch

    capabilities = {0: (7, 5), 1: (8, 0), 2: (9, 0)}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)

    def capability(device=None):
        index = torch.device(device).index
        return capabilities[torch.cuda.current_device() if index is None else index]

    monkeypatch.setattr(torch.cuda, "get_device_capability", capability)
    settings = Settings()
    assert settings.resolve_precision(None, "cuda") == "fp32"  # the current device, a T4
    assert settings.resolve_precision(None, "cuda:0") == "fp32"
    assert settings.resolve_precision(None, "cuda:1") == "bf16"
    assert settings.resolve_precision("auto", "cuda:2") == "bf16"
    assert settings.resolve_precision("bf16", "cuda:0") == "bf16"  # asked for explicitly: the user's call


def test_auto_device_is_cuda_else_cpu_not_mps(monkeypatch):
    """Apple MPS is used only when named: it is untested on a Mac, and CPU is the path that is tested."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert Settings().resolve_device(None) == "cpu"
    assert Settings().resolve_device("mps") == "mps"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert Settings().resolve_device("auto") == "cuda"


def test_explicit_device_this_machine_lacks_is_a_clear_error(monkeypatch):
    import torch

    settings = Settings()
    assert settings.resolve_device("cpu") == "cpu"
    with pytest.raises(ValueError, match=r"is not a torch device.*'cpu', 'cuda'"):
        settings.resolve_device("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"device='cuda' was requested, but .*Use device='cpu'"):
        settings.resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"has 1 CUDA device\(s\) \(cuda:0 to cuda:0\)"):
        settings.resolve_device("cuda:1")
    assert settings.resolve_device("cuda:0") == "cuda:0"


@pytest.mark.parametrize("device", [0, True, 1.0, ["cpu"]])
def test_a_device_that_is_not_a_name_is_refused(device):
    with pytest.raises(ValueError, match=r"device must be a string such as 'cpu'"):
        Settings().resolve_device(device)


def test_devices_panfoma_cannot_run_on_are_refused_and_torch_devices_are_taken():
    import torch

    with pytest.raises(ValueError, match=r"device='meta': PanFoMa runs on 'cpu', 'cuda'"):
        Settings().resolve_device("meta")
    assert Settings().resolve_device(torch.device("cpu")) == "cpu"
    assert Settings(device="cpu").resolve_device(None) == "cpu"


@pytest.mark.parametrize("value", [None, ""])
def test_an_empty_cache_or_data_dir_variable_counts_as_unset(monkeypatch, tmp_path, value):
    for name in ("PANFOMA_CACHE_DIR", "PANFOMA_DATA_DIR"):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    settings = Settings()
    assert settings.cache_dir == tmp_path / "panfoma-sc"  # not Path(""), the current folder
    assert settings.data_dir is None
    monkeypatch.setenv("PANFOMA_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PANFOMA_DATA_DIR", str(tmp_path / "data"))
    assert Settings().cache_dir == tmp_path / "cache"
    assert Settings().data_dir == tmp_path / "data"


@pytest.mark.parametrize(
    ("n_threads", "variable", "expected"),
    [(None, None, None), (None, "1", 1), (None, "4,2", 4), (None, "abc", None), (None, "0", None), (3, "1", 3)],
)
def test_threads_come_from_the_setting_else_omp_num_threads(monkeypatch, n_threads, variable, expected):
    if variable is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", variable)
    assert Settings(n_threads=n_threads).resolve_threads() == expected


@pytest.mark.parametrize("value", [0, 1.5, "2"])
def test_a_thread_count_that_cannot_run_is_refused(value):
    with pytest.raises(ValueError, match=rf"pf.settings.n_threads={value!r}: use an integer >= 1, or None"):
        Settings(n_threads=value).resolve_threads()


def test_embed_runs_with_omp_num_threads_even_after_another_library_changed_torch(
    monkeypatch, pbmc68k, tiny_checkpoint
):
    """numba's OpenMP layer (sc.pp.neighbors, sc.tl.umap) sets torch's threads to every core; embed follows the user."""
    import torch

    import panfoma_sc as pf
    from panfoma_sc.models import _pretrained

    seen = []
    original = _pretrained.cells_per_forward

    def recording(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return original(*args, **kwargs)

    monkeypatch.setattr(_pretrained, "cells_per_forward", recording)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # what numba's OpenMP layer does on a 2-core machine
    try:
        pf.tl.embed(pbmc68k[:40].copy(), model=tiny_checkpoint, batch_size=16, progress=False)
        assert seen
        assert set(seen) == {1}
        assert torch.get_num_threads() == 2  # the caller's count is restored
        monkeypatch.setattr(pf.settings, "n_threads", 2)
        seen.clear()
        pf.tl.embed(pbmc68k[:40].copy(), model=tiny_checkpoint, batch_size=16, progress=False)
        assert set(seen) == {2}
    finally:
        torch.set_num_threads(before)


def test_folders_set_at_runtime_are_paths_and_empty_means_unset(monkeypatch, tmp_path):
    monkeypatch.delenv("PANFOMA_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    settings = Settings()
    settings.cache_dir = str(tmp_path / "mine")
    assert settings.cache_dir == tmp_path / "mine"
    for unset in ("", None):
        settings.cache_dir = unset
        assert settings.cache_dir == tmp_path / "panfoma-sc"  # the default, not Path("") (the current folder)
        settings.data_dir = unset
        assert settings.data_dir is None
    settings.data_dir = "~/data"
    assert settings.data_dir == Path("~/data").expanduser()


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("device", "gpu", r"pf.settings.device='gpu': use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"),
        ("device", 0, r"pf.settings.device=0: use 'auto'"),
        ("batch_size", 0, r"pf.settings.batch_size=0: use an integer >= 1\.$"),
        ("batch_size", "64", r"pf.settings.batch_size='64': use an integer >= 1"),
        ("batch_size", 2.5, r"pf.settings.batch_size=2.5: use an integer >= 1"),
        ("batch_size", None, r"pf.settings.batch_size=None: use an integer >= 1"),
        ("precision", "fp16", r"pf.settings.precision='fp16': use one of \('auto', 'fp32', 'bf16'\)"),
        ("prefetch", "yes", r"pf.settings.prefetch='yes': use an integer >= 0, or None for the default"),
        ("prefetch", -1, r"pf.settings.prefetch=-1: use an integer >= 0"),
        ("n_threads", 0, r"pf.settings.n_threads=0: use an integer >= 1, or None"),
        ("activation_checkpointing", "no", r"pf.settings.activation_checkpointing='no': use True or False"),
        ("cache_dir", 123, r"pf.settings.cache_dir=123: use a folder path"),
    ],
)
def test_a_wrong_value_is_refused_on_the_line_that_sets_it(name, value, expected):
    settings = Settings()
    before = getattr(settings, name)
    with pytest.raises(ValueError, match=expected):
        setattr(settings, name, value)
    assert getattr(settings, name) == before  # left as it was


def test_a_misspelt_setting_is_refused_with_the_closest_name():
    settings = Settings()
    with pytest.raises(AttributeError, match=r"pf.settings has no setting 'devcie'\. Did you mean 'device'\?"):
        settings.devcie = "cpu"
    assert not hasattr(settings, "devcie")


def test_values_are_stored_in_their_canonical_form():
    import numpy as np
    import torch

    settings = Settings(batch_size=np.int64(32), device=torch.device("cuda", 1), activation_checkpointing=np.bool_(1))
    assert (settings.batch_size, settings.device, settings.activation_checkpointing) == (32, "cuda:1", True)
    for device in ("cpu:0", torch.device("cpu", 0)):  # what resolve_device and the tools' device= accept
        settings.device = device
        assert settings.device == "cpu:0"
    assert type(settings.batch_size) is int
    assert type(settings.activation_checkpointing) is bool
    settings.prefetch, settings.n_threads = None, None  # None: the default, where a setting has one
    assert (settings.prefetch, settings.n_threads) == (None, None)


def test_reset_restores_every_default_and_rereads_the_folders(monkeypatch, tmp_path):
    monkeypatch.setenv("PANFOMA_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PANFOMA_DATA_DIR", str(tmp_path / "data"))
    settings = Settings(device="cpu", batch_size=8, precision="fp32", prefetch=2, n_threads=3)
    settings.activation_checkpointing = True
    settings.cache_dir = tmp_path / "elsewhere"
    settings.reset()
    assert settings == Settings()
    assert (settings.device, settings.batch_size, settings.prefetch, settings.cache_dir) == (
        "auto",
        64,
        None,
        tmp_path / "cache",
    )
