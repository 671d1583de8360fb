"""Checkpoint registry: named checkpoints, bundled or downloaded (checksummed, cached), plus user entries."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd

from .._settings import settings
from ._checkpoint import read_checkpoint, sha256sum
from ._pretrained import PretrainedModel

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_MODEL", "RegistryEntry", "available", "describe", "load", "register"]

DEFAULT_MODEL = "panfoma-tiny"
_USER_REGISTRY = "registry.json"


@dataclass
class RegistryEntry:
    """One named checkpoint.

    Exactly one of ``resource`` (a file bundled in this package), ``url`` (downloaded and cached) or ``path``
    (a local file) locates it; ``sha256`` pins its content.
    """

    name: str
    sha256: str
    version: str = "1"
    description: str = ""
    resource: str | None = None
    url: str | None = None
    path: str | None = None
    size: int | None = None
    config: dict[str, Any] | None = None

    @property
    def source(self) -> str:
        """``bundled``, ``url`` or ``local``."""
        return "bundled" if self.resource else "url" if self.url else "local"


def _builtin_entries() -> dict[str, RegistryEntry]:
    text = resources.files(__package__).joinpath("registry.json").read_text()
    return {e["name"]: RegistryEntry(**e) for e in json.loads(text)}


def _user_registry_file() -> Path:
    return Path(settings.cache_dir) / _USER_REGISTRY


def _user_entries() -> dict[str, RegistryEntry]:
    path = _user_registry_file()
    if not path.is_file():
        return {}
    return {e["name"]: RegistryEntry(**e) for e in json.loads(path.read_text())}


def _entries() -> dict[str, RegistryEntry]:
    return {**_builtin_entries(), **_user_entries()}


def _entry(name: str) -> RegistryEntry:
    entries = _entries()
    if name not in entries:
        msg = (
            f"Unknown model {name!r}. Known models: {sorted(entries)}. Pass a path to a .safetensors checkpoint, "
            "or add yours with pf.models.register(name, path_or_url, sha256=...)."
        )
        raise KeyError(msg)
    return entries[name]


def _cached_path(entry: RegistryEntry) -> Path:
    return Path(settings.cache_dir) / "checkpoints" / f"{entry.name}-{entry.sha256[:12]}.safetensors"


def _locate(entry: RegistryEntry) -> Path:
    """Local path of an entry's file, downloading it (pooch, into the cache) when needed."""
    if entry.resource:
        return Path(str(resources.files(__package__).joinpath(entry.resource)))
    if entry.path:
        return Path(entry.path)
    target = _cached_path(entry)
    if target.is_file() and sha256sum(target) == entry.sha256:
        return target  # offline once cached
    import pooch

    try:
        fetched = pooch.retrieve(
            entry.url,
            known_hash=f"sha256:{entry.sha256}",
            fname=target.name,
            path=target.parent,
            progressbar=False,
        )
    except ValueError as err:  # pooch's hash mismatch
        msg = (
            f"Checksum mismatch downloading {entry.name!r} from {entry.url}: expected sha256 {entry.sha256}. "
            f"({err}) The server's file changed or the transfer was corrupted; try again, or check the URL."
        )
        raise ValueError(msg) from err
    return Path(fetched)


def load(name_or_path: str | Path = DEFAULT_MODEL, device: str | None = None) -> PretrainedModel:
    """Load a checkpoint by registry name or file path, verifying its SHA-256.

    Parameters
    ----------
    name_or_path
        A name from :func:`available` or a path to a ``.safetensors`` checkpoint.
    device
        Build the network on this device now (default: on first use, see :attr:`panfoma_sc.settings`).

    Returns
    -------
    The loaded model.

    Examples
    --------
    >>> import panfoma_sc as pf
    >>> model = pf.models.load("panfoma-tiny")
    >>> model.config.d_model
    128
    """
    candidate = Path(name_or_path)
    if str(name_or_path) not in _entries() and (candidate.suffix == ".safetensors" or candidate.exists()):
        model = PretrainedModel.from_file(candidate)
    else:
        entry = _entry(str(name_or_path))
        path = _locate(entry)
        if not path.is_file():
            msg = f"The file of model {entry.name!r} is missing: {path}. Reinstall panfoma-sc or re-register it."
            raise FileNotFoundError(msg)
        got = sha256sum(path)
        if got != entry.sha256:
            msg = (
                f"Checksum mismatch for model {entry.name!r} at {path}: expected sha256 {entry.sha256}, got {got}. "
                "The file is corrupted or was replaced: delete it and download it again (or re-register it)."
            )
            raise ValueError(msg)
        model = PretrainedModel(name=entry.name, path=path, sha256=got, checkpoint=read_checkpoint(path))
    if device is not None:
        model.network(device)
    return model


def register(
    name: str,
    path_or_url: str | Path,
    *,
    sha256: str | None = None,
    description: str = "",
    overwrite: bool = False,
) -> RegistryEntry:
    """Add a checkpoint to the user registry (kept in ``settings.cache_dir``).

    Parameters
    ----------
    name
        Name to load it by.
    path_or_url
        Local ``.safetensors`` file, or an ``http(s)://`` URL.
    sha256
        Expected checksum; required for URLs (downloads are always pinned), checked for files.
    description
        Free text shown by :func:`available`.
    overwrite
        Replace an existing user entry of that name.

    Returns
    -------
    The new entry.
    """
    if name in _builtin_entries():
        msg = f"{name!r} is a built-in model name; choose another name."
        raise ValueError(msg)
    user = _user_entries()
    if name in user and not overwrite:
        msg = f"A model named {name!r} is already registered; pass overwrite=True to replace it."
        raise ValueError(msg)
    if sha256 is not None and re.fullmatch(r"[0-9a-fA-F]{64}", sha256.strip()) is None:
        msg = (
            f"sha256={sha256!r} is not a SHA-256 checksum (64 hexadecimal characters). Compute it with "
            "`sha256sum FILE` or hashlib.sha256(open(FILE, 'rb').read()).hexdigest()."
        )
        raise ValueError(msg)
    sha256 = None if sha256 is None else sha256.strip()
    text = str(path_or_url)
    if text.startswith(("http://", "https://")):
        if not sha256:
            msg = "Registering a URL needs sha256=... so that every download is verified."
            raise ValueError(msg)
        entry = RegistryEntry(name=name, sha256=sha256.lower(), url=text, description=description)
    else:
        path = Path(text).expanduser().resolve()
        checkpoint = read_checkpoint(path)  # validates the file before it is registered
        got = sha256sum(path)
        if sha256 and sha256.lower() != got:
            msg = f"Checksum mismatch for {str(path)!r}: expected sha256 {sha256}, got {got}."
            raise ValueError(msg)
        entry = RegistryEntry(
            name=name,
            sha256=got,
            path=str(path),
            description=description,
            size=path.stat().st_size,
            config=checkpoint.config.to_dict(),
        )
    user[name] = entry
    registry_file = _user_registry_file()
    registry_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = registry_file.with_suffix(".json.partial")
    tmp.write_text(json.dumps([asdict(e) for e in user.values()], indent=2))
    tmp.replace(registry_file)
    return entry


def available() -> pd.DataFrame:
    """Registered checkpoints, one row each: name, source, whether its file is here, size and sizes.

    Examples
    --------
    >>> import panfoma_sc as pf
    >>> "panfoma-tiny" in pf.models.available()["name"].tolist()
    True
    """
    rows = []
    for entry in _entries().values():
        config = entry.config or {}
        local = (_cached_path(entry) if entry.source == "url" else _locate(entry)).is_file()
        rows.append(
            {
                "name": entry.name,
                "version": entry.version,
                "source": entry.source,
                "available_offline": local,
                "size_mb": round(entry.size / 1e6, 2) if entry.size else None,
                "d_model": config.get("d_model"),
                "n_genes": config.get("n_genes"),
                "description": entry.description,
            }
        )
    return pd.DataFrame(rows)


def describe(name_or_path: str | Path = DEFAULT_MODEL) -> dict[str, Any]:
    """Everything known about a checkpoint: config, parameter count, vocabulary size, training summary.

    An architecture name of :data:`panfoma_sc.nn.CONFIGS` with no registered checkpoint (e.g.
    ``"panfoma-base"``) is described too, with the parameter count for the default model's vocabulary.

    Parameters
    ----------
    name_or_path
        Registry name, checkpoint path or architecture name.

    Returns
    -------
    A JSON-able dict.
    """
    from ..nn import CONFIGS, PanFoMa

    name = str(name_or_path)
    if name not in _entries() and name in CONFIGS and not Path(name).exists():
        vocab_size = len(load(DEFAULT_MODEL).vocab) if DEFAULT_MODEL in _entries() else CONFIGS[name].vocab_size
        config = CONFIGS[name].replace(vocab_size=vocab_size)
        return {
            "name": name,
            "checkpoint": None,
            "n_parameters": PanFoMa(config, device="meta").n_parameters(),
            "vocab_size": vocab_size,
            "config": config.to_dict(),
        }
    model = load(name_or_path)
    network = model.checkpoint.build_model("cpu")
    return {
        "name": model.name,
        "checkpoint": str(model.path),
        "sha256": model.sha256,
        "n_parameters": network.n_parameters(),
        "vocab_size": len(model.vocab),
        "config": model.config.to_dict(),
        **{k: v for k, v in model.info.items() if k != "name"},
    }
