from __future__ import annotations

import functools
import http.server
import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

import panfoma_sc as pf
from panfoma_sc.models import read_checkpoint, sha256sum


@pytest.fixture
def http_server(tmp_path):
    """A local HTTP server serving tmp_path/served (stands in for the remote download host)."""
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}", server
    server.shutdown()
    server.server_close()


def test_checkpoint_round_trip(tiny_checkpoint):
    model = pf.models.load(tiny_checkpoint)
    network = model.network("cpu")
    saved = read_checkpoint(tiny_checkpoint)
    for key, tensor in network.state_dict().items():
        np.testing.assert_array_equal(tensor.numpy(), saved.state_dict[key].numpy(), err_msg=key)
    assert model.sha256 == sha256sum(tiny_checkpoint)
    assert len(model.vocab) == model.config.vocab_size


def test_half_precision_checkpoint_is_smaller_and_loads(tiny_checkpoint, tmp_path):
    model = pf.models.load(tiny_checkpoint)
    half = tmp_path / "half.safetensors"
    pf.models.write_checkpoint(half, model.network("cpu"), model.vocab, half_precision=True)
    assert half.stat().st_size < 0.6 * tiny_checkpoint.stat().st_size
    reloaded = pf.models.load(half).network("cpu")
    for key, tensor in model.network("cpu").state_dict().items():
        np.testing.assert_allclose(reloaded.state_dict()[key].numpy(), tensor.numpy(), rtol=1e-2, atol=1e-3)


def test_register_local_file_then_load_and_list(tiny_checkpoint, tmp_path):
    path = tmp_path / "mine.safetensors"
    shutil.copy(tiny_checkpoint, path)
    entry = pf.models.register("my-model", path, description="test model")
    assert entry.sha256 == sha256sum(path)
    table = pf.models.available()
    assert "my-model" in table["name"].tolist()
    row = table.set_index("name").loc["my-model"]
    assert row["source"] == "local"
    assert bool(row["available_offline"])
    loaded = pf.models.load("my-model")
    assert loaded.name == "my-model"
    described = pf.models.describe("my-model")
    assert described["n_parameters"] > 0
    assert described["vocab_size"] == len(loaded.vocab)
    with pytest.raises(ValueError, match="already registered"):
        pf.models.register("my-model", path)


def test_corrupted_file_gives_checksum_error(tiny_checkpoint, tmp_path):
    path = tmp_path / "mine.safetensors"
    shutil.copy(tiny_checkpoint, path)
    pf.models.register("my-model", path)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(
        ValueError, match=r"Checksum mismatch.*expected sha256 [0-9a-f]{64}, got [0-9a-f]{64}.*download"
    ):
        pf.models.load("my-model")


def test_unknown_name_lists_known_models():
    with pytest.raises(KeyError, match="Known models"):
        pf.models.load("no-such-model")


def test_truncated_file_is_refused(tiny_checkpoint, tmp_path):
    path = tmp_path / "cut.safetensors"
    path.write_bytes(tiny_checkpoint.read_bytes()[:1000])
    with pytest.raises(ValueError, match="truncated or corrupted"):
        pf.models.load(path)


def test_not_a_panfoma_checkpoint_is_refused(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"w": np.zeros(3, dtype=np.float32)}, str(path))
    with pytest.raises(ValueError, match="not a panfoma-sc checkpoint"):
        pf.models.load(path)


def _rewrite_metadata(source: Path, target: Path, **changes: str) -> None:
    from safetensors import safe_open
    from safetensors.numpy import load_file

    with safe_open(str(source), framework="np") as fh:
        metadata = dict(fh.metadata())
    metadata.update(changes)
    save_file(load_file(str(source)), str(target), metadata=metadata)


def test_newer_format_and_unknown_config_fields_are_refused(tiny_checkpoint, tmp_path):
    newer = tmp_path / "newer.safetensors"
    _rewrite_metadata(tiny_checkpoint, newer, format_version="99", panfoma_sc_version="9.0")
    with pytest.raises(ValueError, match="newer than this panfoma-sc supports"):
        pf.models.load(newer)
    config = json.loads(read_checkpoint(tiny_checkpoint).config.to_json())
    config["rotary_embeddings"] = True
    future = tmp_path / "future.safetensors"
    _rewrite_metadata(tiny_checkpoint, future, config=json.dumps(config))
    with pytest.raises(ValueError, match="does not know"):
        pf.models.load(future)


def test_url_registration_needs_a_checksum():
    with pytest.raises(ValueError, match="sha256"):
        pf.models.register("remote", "http://127.0.0.1:1/model.safetensors")


@pytest.mark.parametrize("checksum", ["abc", "g" * 64, "0" * 63])
def test_a_malformed_checksum_is_refused_at_registration(tiny_checkpoint, checksum):
    for source in ("http://127.0.0.1:1/model.safetensors", str(tiny_checkpoint)):
        with pytest.raises(ValueError, match="is not a SHA-256 checksum"):
            pf.models.register("remote", source, sha256=checksum)
    assert "remote" not in pf.models.available()["name"].tolist()


def test_download_is_verified_cached_and_works_offline(tiny_checkpoint, http_server):
    root, base_url, server = http_server
    shutil.copy(tiny_checkpoint, root / "remote.safetensors")
    digest = sha256sum(tiny_checkpoint)
    pf.models.register("remote", f"{base_url}/remote.safetensors", sha256=digest)
    assert not pf.models.available().set_index("name").loc["remote", "available_offline"]
    first = pf.models.load("remote")
    assert first.sha256 == digest
    assert Path(first.path).is_relative_to(pf.settings.cache_dir)
    server.shutdown()  # offline from here on
    second = pf.models.load("remote")
    assert second.path == first.path
    assert pf.models.available().set_index("name").loc["remote", "available_offline"]


def test_download_with_wrong_checksum_fails_clearly(tiny_checkpoint, http_server):
    root, base_url, _ = http_server
    shutil.copy(tiny_checkpoint, root / "remote.safetensors")
    pf.models.register("remote", f"{base_url}/remote.safetensors", sha256="0" * 64)
    with pytest.raises(ValueError, match="Checksum mismatch downloading 'remote'"):
        pf.models.load("remote")
