from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shutil
import socket
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests
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


def test_a_changed_registered_file_gives_a_checksum_error_that_says_to_re_register(tiny_checkpoint, tmp_path):
    path = tmp_path / "mine.safetensors"
    shutil.copy(tiny_checkpoint, path)
    pf.models.register("my-model", path)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(
        ValueError, match=r"Checksum mismatch.*expected sha256 [0-9a-f]{64}, got [0-9a-f]{64}.*overwrite=True"
    ) as error:
        pf.models.load("my-model")
    assert "download" not in str(error.value)  # the user's own file: there is nothing to download


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


def test_a_cache_folder_that_cannot_hold_the_download_is_not_called_a_checksum_mismatch(tiny_checkpoint, http_server):
    root, base_url, _ = http_server
    shutil.copy(tiny_checkpoint, root / "remote.safetensors")
    pf.models.register("remote", f"{base_url}/remote.safetensors", sha256=sha256sum(tiny_checkpoint))
    blocker = pf.settings.cache_dir / "checkpoints"
    blocker.write_text("")  # a file where the download folder belongs
    with pytest.raises(ValueError, match=r"cache folder .*PANFOMA_CACHE_DIR.*holds a file where the folder") as error:
        pf.models.load("remote")
    assert str(blocker) in str(error.value)
    assert "Checksum mismatch" not in str(error.value)


def _unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("failure", ["not found", "no server"])
def test_a_failed_download_names_the_model_the_url_and_the_fixes(tiny_checkpoint, http_server, failure, capsys):
    from panfoma_sc.cli import EXIT_FAILURE, main

    _, base_url, _ = http_server
    if failure == "no server":
        base_url = f"http://127.0.0.1:{_unused_port()}"
    url = f"{base_url}/missing.safetensors"
    digest = sha256sum(tiny_checkpoint)
    pf.models.register("remote", url, sha256=digest)
    reason = "404" if failure == "not found" else "Connection refused|Max retries"
    expected = (
        rf"Downloading model 'remote' from {re.escape(url)} failed: .*({reason}).*\. Check the URL and the network "
        rf"connection .* pf\.models\.register\('remote', 'path/to/model\.safetensors', sha256='{digest}'"
    )
    with pytest.raises(ConnectionError, match=expected) as error:
        pf.models.load("remote")
    assert isinstance(error.value.__cause__, requests.RequestException)  # the original error stays attached
    assert main(["models", "describe", "remote"]) == EXIT_FAILURE
    on_the_command_line = expected.replace(
        r"pf\.models\.register\('remote', 'path/to/model\.safetensors', sha256='",
        r"panfoma models register remote path/to/model\.safetensors --sha256 ",
    ).removesuffix("'")
    assert on_the_command_line != expected
    assert re.search(rf"panfoma: failed: ConnectionError: {on_the_command_line}", capsys.readouterr().err)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{broken", r"cannot be read \(Expecting property name"),
        ('{"name": "x"}', "holds a dict, not a list of entries"),
        ('[{"name": "mine", "path": "/x.safetensors"}]', r"Entry 1 \('mine'\) .* lacks the field\(s\) \['sha256'\]"),
        ('[{"name": "mine", "sha256": "00", "path": "/x", "colour": 1}]', r"unknown field\(s\) \['colour'\]"),
        ('[{"name": "mine", "sha256": "00"}]', "needs exactly one of 'path'"),
        ('["mine"]', "Entry 1 .* is a str, not an object"),
    ],
)
def test_a_broken_user_registry_is_named_and_does_not_stop_the_bundled_model(content, problem):
    registry = pf.settings.cache_dir / "registry.json"
    registry.write_text(content)
    assert pf.models.load("panfoma-tiny").name == "panfoma-tiny"  # built-in models never read the user registry
    assert pf.models.describe("panfoma-tiny")["checkpoint"] is not None
    for call in (pf.models.available, lambda: pf.models.load("mine"), lambda: pf.models.register("x", "y")):
        with pytest.raises(ValueError, match=problem) as error:
            call()
        assert str(registry) in str(error.value)
        assert "delete" in str(error.value)
    assert registry.read_text() == content  # register refused to overwrite the registrations it could not read


def test_a_cache_dir_that_is_a_file_or_cannot_be_created_is_named(tiny_checkpoint, tmp_path, monkeypatch):
    afile = tmp_path / "a-file"
    afile.write_text("")
    for cache_dir, problem in ((afile, "is a file, not a folder"), (afile / "sub", "cannot be created")):
        monkeypatch.setattr(pf.settings, "cache_dir", cache_dir)
        named = f"cache folder '{re.escape(str(cache_dir))}' .*PANFOMA_CACHE_DIR.*{problem}"
        with pytest.raises(ValueError, match=named):
            pf.models.register("my-model", tiny_checkpoint)
        assert pf.models.load("panfoma-tiny").name == "panfoma-tiny"


@pytest.mark.parametrize("call", ["register", "load", "describe"])
def test_a_file_that_is_not_a_checkpoint_is_not_called_a_broken_download(tmp_path, call):
    data = tmp_path / "cells.h5ad"
    data.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(200))
    run = {
        "register": lambda: pf.models.register("mine", data),
        "load": lambda: pf.models.load(data),
        "describe": lambda: pf.models.describe(str(data)),
    }[call]
    with pytest.raises(ValueError, match=r"cells\.h5ad' is not a readable .* a \.h5ad file, not a \.safetensors") as e:
        run()
    assert "download" not in str(e.value)


def test_a_registered_file_that_is_gone_says_how_to_register_it_again(tiny_checkpoint, tmp_path):
    path = tmp_path / "mine.safetensors"
    shutil.copy(tiny_checkpoint, path)
    pf.models.register("my-model", path)
    path.unlink()
    with pytest.raises(FileNotFoundError, match=r"registered to .*mine\.safetensors', which no longer exists") as e:
        pf.models.load("my-model")
    assert "overwrite=True" in str(e.value)
    assert "Reinstall" not in str(e.value)


def test_file_urls_are_local_paths_and_url_schemes_are_case_insensitive(tiny_checkpoint, tmp_path, http_server):
    path = tmp_path / "my model.safetensors"
    shutil.copy(tiny_checkpoint, path)
    entry = pf.models.register("local", path.as_uri())  # file:///.../my%20model.safetensors
    assert entry.path == str(path)
    assert pf.models.load("local").sha256 == sha256sum(path)
    assert pf.models.load(path.as_uri()).path == path
    root, base_url, _ = http_server
    shutil.copy(tiny_checkpoint, root / "remote.safetensors")
    upper = base_url.replace("http://", "HTTP://") + "/remote.safetensors"
    entry = pf.models.register("remote", upper, sha256=sha256sum(tiny_checkpoint))
    assert entry.url == f"{base_url}/remote.safetensors"
    assert pf.models.load("remote").sha256 == entry.sha256
    with pytest.raises(ValueError, match="ftp:// URLs are not supported"):
        pf.models.register("ftp", "ftp://example.org/model.safetensors", sha256="0" * 64)
    with pytest.raises(ValueError, match=r"not a URL.*Register it first"):
        pf.models.load(upper)


@pytest.mark.parametrize("name", ["", "  ", "mine.safetensors", "models/mine", "models\\mine", "MINE.SAFETENSORS"])
def test_names_that_would_read_as_paths_are_refused(tiny_checkpoint, name):
    with pytest.raises(ValueError, match=r"non-empty string|looks like a file path"):
        pf.models.register(name, tiny_checkpoint)
    assert not (pf.settings.cache_dir / "registry.json").exists()


@pytest.mark.parametrize(
    ("name", "message"),
    [
        (" panfoma-tiny", "leading or trailing spaces or non-printing characters"),
        ("mine\nother", "leading or trailing spaces or non-printing characters"),
        ("PANFOMA-TINY", r"'PANFOMA-TINY' is \(or reads as\) the built-in model name 'panfoma-tiny'"),
        ("panfoma-tiny", r"is \(or reads as\) the built-in model name"),
    ],
)
def test_names_that_would_read_as_another_model_are_refused(tiny_checkpoint, name, message):
    with pytest.raises(ValueError, match=message):
        pf.models.register(name, tiny_checkpoint)
    assert not (pf.settings.cache_dir / "registry.json").exists()
    assert pf.models.register("Mine-2", tiny_checkpoint).name == "Mine-2"  # capitals alone are fine


def test_loading_a_folder_says_it_is_a_folder(tiny_checkpoint, tmp_path):
    shutil.copy(tiny_checkpoint, tmp_path / "mine.safetensors")
    with pytest.raises(FileNotFoundError, match=r"is a folder: pass the path of a \.safetensors .*mine\.safetensors"):
        pf.models.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="is a folder"):
        pf.models.load(str(tmp_path) + "/")


def _serve_and_register(tiny_checkpoint, http_server, sha256: str | None = None):
    """Serve the tiny checkpoint as ``remote.safetensors`` and register it as ``remote`` (its real checksum)."""
    root, base_url, server = http_server
    shutil.copy(tiny_checkpoint, root / "remote.safetensors")
    pf.models.register("remote", f"{base_url}/remote.safetensors", sha256=sha256 or sha256sum(tiny_checkpoint))
    return root, base_url, server


def _register_many(args) -> None:
    """One process of the concurrency test: register its names (top level, so it pickles)."""
    cache_dir, path, names = args
    pf.settings.cache_dir = Path(cache_dir)
    for name in names:
        pf.models.register(name, path)


def test_registrations_made_at_the_same_time_all_land(tiny_checkpoint):
    """Several notebooks or array jobs registering at once: no entry is lost (the registry is locked)."""
    import multiprocessing

    names = [[f"job{process}-{k}" for k in range(4)] for process in range(4)]
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        pool.map(_register_many, [(str(pf.settings.cache_dir), str(tiny_checkpoint), group) for group in names])
    threads = [threading.Thread(target=pf.models.register, args=(f"thread{k}", tiny_checkpoint)) for k in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    listed = set(pf.models.available()["name"])
    assert {name for group in names for name in group} <= listed
    assert {f"thread{k}" for k in range(6)} <= listed
    assert not list(pf.settings.cache_dir.glob("*.partial"))


def test_a_wrong_registered_checksum_is_named_as_a_possible_cause(tiny_checkpoint, http_server):
    _serve_and_register(tiny_checkpoint, http_server, sha256="0" * 64)
    with pytest.raises(ValueError, match=r"the sha256 given when registering is wrong .*overwrite=True"):
        pf.models.load("remote")


def test_a_damaged_cached_copy_is_named_when_downloading_it_again_fails(tiny_checkpoint, http_server):
    *_, server = _serve_and_register(tiny_checkpoint, http_server)
    cached = Path(pf.models.load("remote").path)
    cached.write_bytes(cached.read_bytes()[:100])
    server.shutdown()
    with pytest.raises(ConnectionError, match=r"cached copy .* does not match its sha256 \(damaged or incomplete\)"):
        pf.models.load("remote")


def test_an_unreadable_cached_file_is_named_with_the_fix(tiny_checkpoint, http_server, monkeypatch):
    """Another user's 0600 download in a shared cache. Tests run as root, who reads any file: the refusal is mocked."""
    from panfoma_sc.models import _registry

    _serve_and_register(tiny_checkpoint, http_server)
    cached = Path(pf.models.load("remote").path)
    readable = os.access

    def refused(path):
        if Path(path) == cached:
            raise PermissionError(13, "Permission denied", str(path))
        return sha256sum(path)

    monkeypatch.setattr(_registry, "sha256sum", refused)
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != cached and readable(path, mode))
    assert not pf.models.available().set_index("name").loc["remote", "available_offline"]
    with pytest.raises(ValueError, match=r"cannot be read \(Permission denied\).*chmod a\+r.*PANFOMA_CACHE_DIR"):
        pf.models.load("remote")


def test_a_download_gets_the_permissions_of_a_normally_created_file(tiny_checkpoint, http_server):
    """pooch's temporary file is 0600: in a shared cache other users could not read the checkpoint."""
    _serve_and_register(tiny_checkpoint, http_server)
    umask = os.umask(0o022)
    try:
        cached = Path(pf.models.load("remote").path)
    finally:
        os.umask(umask)
    assert cached.stat().st_mode & 0o777 == 0o644
    assert (pf.settings.cache_dir / "registry.json").stat().st_mode & 0o777 == 0o644


def test_a_permission_error_while_downloading_names_the_cache_folder(tiny_checkpoint, http_server, monkeypatch):
    """pooch reports an unwritable cache as a PermissionError without a file name: not a network problem."""
    import pooch

    _serve_and_register(tiny_checkpoint, http_server)

    def refused(*args, **kwargs):
        raise PermissionError("Pooch could not write to data cache folder")

    monkeypatch.setattr(pooch, "retrieve", refused)
    with pytest.raises(ValueError, match=r"cache folder .*cannot be created or written to") as error:
        pf.models.load("remote")
    assert "network" not in str(error.value)


def test_a_saved_checkpoint_gets_the_permissions_of_a_normally_created_file(tiny_checkpoint, tmp_path):
    """The safetensors library writes 0600: a checkpoint saved in a shared project would be unreadable to others."""
    umask = os.umask(0o022)
    try:
        pf.models.load(tiny_checkpoint).save(tmp_path / "shared.safetensors")
    finally:
        os.umask(umask)
    assert (tmp_path / "shared.safetensors").stat().st_mode & 0o777 == 0o644


def test_model_sizes_are_integers_in_the_listing(tiny_checkpoint):
    pf.models.register("remote", "https://example.org/m.safetensors", sha256="0" * 64)
    table = pf.models.available().set_index("name")
    assert table.loc["panfoma-tiny", "d_model"] == 128
    assert str(table["d_model"].dtype) == "Int64"
    assert table["d_model"].isna()["remote"]


def test_a_downloaded_url_entry_shows_its_size_and_a_replaced_download_is_removed(tiny_checkpoint, http_server):
    root, base_url, _ = http_server
    shutil.copy(tiny_checkpoint, root / "remote.safetensors")
    url = f"{base_url}/remote.safetensors"
    pf.models.register("remote", url, sha256=sha256sum(tiny_checkpoint))
    assert pd.isna(pf.models.available().set_index("name").loc["remote", "size_mb"])
    first = Path(pf.models.load("remote").path)
    size_mb = pf.models.available().set_index("name").loc["remote", "size_mb"]
    assert size_mb == round(first.stat().st_size / 1e6, 2)
    other = root / "other.safetensors"
    save_file({"x": np.zeros(3, dtype=np.float32)}, other)  # any other file: only its checksum matters here
    pf.models.register("remote", f"{base_url}/other.safetensors", sha256=sha256sum(other), overwrite=True)
    assert not first.exists()
