"""Checkpoint registry: named checkpoints, bundled or downloaded (checksummed, cached), plus user entries."""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import tempfile
from dataclasses import MISSING, asdict, dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from urllib.request import url2pathname

import pandas as pd

from .._paths import give_usual_permissions
from .._settings import settings
from ._checkpoint import read_checkpoint, sha256sum
from ._pretrained import PretrainedModel

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_MODEL", "RegistryEntry", "available", "describe", "load", "register"]

DEFAULT_MODEL = "panfoma-tiny"
_USER_REGISTRY = "registry.json"
_URL_SCHEMES = ("http", "https")
_REINSTALL = "Reinstall panfoma-sc: pip install --force-reinstall panfoma-sc."
_DELETING_FORGETS = "that forgets only the models you registered; the built-in ones keep working."


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


def _registry_fix(path: Path) -> str:
    return (
        f"Repair {str(path)!r} (a JSON list of entries, as pf.models.register writes it), or delete it: "
        + _DELETING_FORGETS
    )


def _user_entries() -> dict[str, RegistryEntry]:
    """The user registry (``cache_dir/registry.json``); a ``ValueError`` naming the file when it is unreadable."""
    path = _user_registry_file()
    if not path.is_file():
        return {}
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        msg = f"The model registry {str(path)!r} cannot be read ({err}). {_registry_fix(path)}"
        raise ValueError(msg) from None
    if not isinstance(records, list):
        msg = f"The model registry {str(path)!r} holds a {type(records).__name__}, not a list of entries. "
        raise ValueError(msg + _registry_fix(path))
    entries = [_user_entry(record, number, path) for number, record in enumerate(records, start=1)]
    return {entry.name: entry for entry in entries}


def _user_entry(record: Any, number: int, path: Path) -> RegistryEntry:
    """One record of the user registry as an entry, or a ``ValueError`` naming the entry, the file and the fix."""
    known = {f.name for f in fields(RegistryEntry)}
    required = {f.name for f in fields(RegistryEntry) if f.default is MISSING}
    name = record.get("name") if isinstance(record, dict) else None
    where = f"Entry {number}{f' ({name!r})' if name is not None else ''} of the model registry {str(path)!r}"
    if not isinstance(record, dict):
        problem = f"is a {type(record).__name__}, not an object"
    elif missing := sorted(required - set(record)):
        problem = f"lacks the field(s) {missing}"
    elif unknown := sorted(set(record) - known):
        problem = f"has unknown field(s) {unknown}"
    elif not isinstance(name, str) or not isinstance(record["sha256"], str):
        problem = "has a 'name' or 'sha256' that is not a string"
    elif bool(record.get("path")) == bool(record.get("url")):
        problem = "needs exactly one of 'path' (a local file) or 'url'"
    else:
        return RegistryEntry(**record)
    msg = f"{where} {problem}. Fix or remove that entry, or delete the file: {_DELETING_FORGETS}"
    raise ValueError(msg)


def _entries() -> dict[str, RegistryEntry]:
    """Built-in entries, then the user's (a user entry never replaces a built-in one)."""
    builtin = _builtin_entries()
    return {**builtin, **{name: e for name, e in _user_entries().items() if name not in builtin}}


def _looks_like_path(text: str) -> bool:
    """Whether ``text`` can only be a file: registry names never hold separators nor end in ``.safetensors``."""
    return "/" in text or "\\" in text or text.lower().endswith(".safetensors")


def _parse_location(text: str) -> str | Path:
    """An ``http(s)://`` URL (scheme lower-cased), or the local path of a file name or ``file://`` URL."""
    if "://" not in text:
        return Path(text).expanduser()
    scheme = text.split("://", 1)[0].lower()
    if scheme in _URL_SCHEMES:
        return scheme + text[len(scheme) :]
    if scheme != "file":
        msg = (
            f"{text!r}: {scheme}:// URLs are not supported. Pass an http:// or https:// URL (with sha256=...), "
            "a local path, or a file:// URL; download other sources yourself and register the local file."
        )
        raise ValueError(msg)
    parts = urlsplit(text)
    if parts.netloc not in ("", "localhost"):
        msg = (
            f"{text!r} names host {parts.netloc!r}; a file:// URL needs an absolute local path, with three "
            "slashes: file:///path/to/model.safetensors."
        )
        raise ValueError(msg)
    return Path(url2pathname(parts.path))


def _resolve(name_or_path: str | Path) -> RegistryEntry | Path:
    """The registry entry called ``name_or_path``, else the checkpoint file it names.

    Built-in names come first and never read the user registry, so that a broken registry cannot stop the
    bundled model.
    """
    text = str(name_or_path)
    builtin = _builtin_entries()
    if text in builtin:
        return builtin[text]
    if "://" in text:
        location = _parse_location(text)
        if isinstance(location, str):
            msg = (
                f"pf.models.load takes a registry name or a local file, not a URL ({text}). Register it first: "
                f"pf.models.register('my-model', {text!r}, sha256=...), then load 'my-model'."
            )
            raise ValueError(msg)
        return location
    if text and _looks_like_path(text):
        return Path(text).expanduser()
    user = _user_entries()
    if text in user:
        return user[text]
    if text and Path(text).exists():
        return Path(text)
    msg = (
        f"Unknown model {text!r}. Known models: {sorted({**builtin, **user})}. Pass a path to a .safetensors "
        "checkpoint, or add yours with pf.models.register(name, path_or_url, sha256=...)."
    )
    raise KeyError(msg)


def _cached_path(entry: RegistryEntry) -> Path:
    return Path(settings.cache_dir) / "checkpoints" / f"{entry.name}-{entry.sha256[:12]}.safetensors"


def _cache_folder(*parts: str) -> Path:
    """``settings.cache_dir / parts``, created when missing; a ``ValueError`` naming PANFOMA_CACHE_DIR if not."""
    root = Path(settings.cache_dir)
    folder = root.joinpath(*parts)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _cache_error(root, err, folder) from err
    return folder


def _cache_error(root: Path, err: OSError, folder: Path | None = None) -> ValueError:
    """``err`` retold as a bad setting: which cache folder (and which setting) is at fault, and how to fix it.

    ``folder``: the folder inside ``root`` that was being created, if any.
    """
    if root.exists() and not root.is_dir():
        problem = "is a file, not a folder"
    elif folder is not None and folder != root and folder.exists() and not folder.is_dir():
        problem = f"holds a file where the folder {str(folder)!r} belongs (move or delete that file)"
    else:
        problem = f"cannot be created or written to ({err.strerror or err})"
    msg = (
        f"The panfoma-sc cache folder {str(root)!r} (env PANFOMA_CACHE_DIR, or pf.settings.cache_dir) {problem}. "
        "Set PANFOMA_CACHE_DIR to a folder you can write to, or unset it to use ~/.cache/panfoma-sc."
    )
    return ValueError(msg)


def _locate(entry: RegistryEntry) -> Path:
    """Local path of an entry's file, downloading it (pooch, into the cache) when needed."""
    if entry.resource:
        return Path(str(resources.files(__package__).joinpath(entry.resource)))
    if entry.path:
        return Path(entry.path)
    target = _cached_path(entry)
    damaged = None  # a cached copy that does not match the sha256: why the file is downloaded again
    if target.is_file():
        try:
            if sha256sum(target) == entry.sha256:
                return target  # offline once cached
        except OSError as err:  # e.g. a shared cache whose file another user downloaded without read permission
            raise _cached_file_error(target, err) from err
        damaged = target
    import pooch
    import requests

    folder = _cache_folder(target.parent.name)  # outside the try: a bad cache folder is not a bad download
    try:
        fetched = pooch.retrieve(
            entry.url, known_hash=f"sha256:{entry.sha256}", fname=target.name, path=folder, progressbar=False
        )
    except ValueError as err:  # pooch's hash mismatch
        msg = (
            f"Checksum mismatch downloading {entry.name!r} from {entry.url}: expected sha256 {entry.sha256}. "
            f"({err}) Either the sha256 given when registering is wrong (register it again with the right one: "
            f"pf.models.register({entry.name!r}, {entry.url!r}, sha256=..., overwrite=True)), or the server's file "
            "changed or the transfer was corrupted: check the URL and try again."
        )
        raise ValueError(msg) from err
    except requests.RequestException as err:  # server down, refused, timed out, 404, ...
        raise ConnectionError(_download_error_message(entry, err, damaged=damaged)) from err
    except OSError as err:
        if err.filename is not None or isinstance(err, PermissionError) or err.errno in _CACHE_ERRNOS:
            # writing the download into the cache folder failed (permissions, disk full, read-only file system)
            raise _cache_error(Path(settings.cache_dir), err) from err
        raise ConnectionError(_download_error_message(entry, err, damaged=damaged)) from err
    give_usual_permissions(Path(fetched))
    return Path(fetched)


#: errors of writing into the cache folder rather than of the download itself
_CACHE_ERRNOS = {errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EROFS, errno.EDQUOT}


def _cached_file_error(path: Path, err: OSError) -> ValueError:
    msg = (
        f"The cached checkpoint {str(path)!r} cannot be read ({err.strerror or err}). In a shared cache folder, "
        "ask its owner to make it readable (chmod a+r), or set PANFOMA_CACHE_DIR to a folder of your own."
    )
    return ValueError(msg)


def _download_error_message(entry: RegistryEntry, err: Exception, *, damaged: Path | None = None) -> str:
    """Why downloading ``entry`` failed (``err``, in one line) and the two ways out: fix the URL, or a local file.

    ``damaged``: a cached copy that did not match the sha256, which is why the file was downloaded again.
    """
    reason = " ".join(str(err).split()) or type(err).__name__
    why = (
        f"The cached copy {str(damaged)!r} does not match its sha256 (damaged or incomplete), so it was downloaded "
        "again. "
        if damaged is not None
        else ""
    )
    return (
        f"{why}Downloading model {entry.name!r} from {entry.url} failed: {reason}. Check the URL and the network "
        "connection and try again, or download the file yourself and register the local copy: "
        f"pf.models.register({entry.name!r}, 'path/to/model.safetensors', sha256={entry.sha256!r}, overwrite=True)."
    )


def _missing_file_message(entry: RegistryEntry, path: Path) -> str:
    if entry.source == "bundled":
        return f"The bundled file of model {entry.name!r} is missing: {path}. {_REINSTALL}"
    return (
        f"Model {entry.name!r} is registered to {str(path)!r}, which no longer exists (moved or deleted). Register "
        f"it again where it is now: pf.models.register({entry.name!r}, 'path/to/model.safetensors', overwrite=True)."
    )


def _checksum_fix(entry: RegistryEntry, path: Path) -> str:
    if entry.source == "bundled":
        return f"The bundled file is damaged. {_REINSTALL}"
    if entry.source == "url":
        return f"The download is corrupted: delete {str(path)!r} and load {entry.name!r} again to download it anew."
    return (
        "The file changed since it was registered. If the new file is the one you want, register it again: "
        f"pf.models.register({entry.name!r}, {str(path)!r}, overwrite=True); otherwise restore the original."
    )


def _load_entry(entry: RegistryEntry) -> PretrainedModel:
    """The checkpoint of a registry entry, its file's SHA-256 checked against the entry's."""
    path = _locate(entry)
    if not path.is_file():
        raise FileNotFoundError(_missing_file_message(entry, path))
    got = sha256sum(path)
    if got != entry.sha256:
        msg = (
            f"Checksum mismatch for model {entry.name!r} at {path}: expected sha256 {entry.sha256}, got {got}. "
            + _checksum_fix(entry, path)
        )
        raise ValueError(msg)
    return PretrainedModel(name=entry.name, path=path, sha256=got, checkpoint=read_checkpoint(path))


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
    target = _resolve(name_or_path)
    model = PretrainedModel.from_file(target) if isinstance(target, Path) else _load_entry(target)
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
        Name to load it by: not empty, without a path separator, not ending in ``.safetensors`` (such names
        would read as file paths in :func:`load`).
    path_or_url
        Local ``.safetensors`` file (a path or a ``file://`` URL), or an ``http://`` / ``https://`` URL.
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
    _check_name(name)
    if sha256 is not None and re.fullmatch(r"[0-9a-fA-F]{64}", sha256.strip()) is None:
        msg = (
            f"sha256={sha256!r} is not a SHA-256 checksum (64 hexadecimal characters). Compute it with "
            "`sha256sum FILE` or hashlib.sha256(open(FILE, 'rb').read()).hexdigest()."
        )
        raise ValueError(msg)
    sha256 = None if sha256 is None else sha256.strip().lower()
    _refuse_taken_name(_user_entries(), name, overwrite)  # a broken registry is refused here, never overwritten
    location = _parse_location(str(path_or_url))
    if isinstance(location, str):
        if not sha256:
            msg = "Registering a URL needs sha256=... so that every download is verified."
            raise ValueError(msg)
        entry = RegistryEntry(name=name, sha256=sha256, url=location, description=description)
    else:
        entry = _local_entry(name, location.resolve(), sha256, description)  # reads the file: outside the lock
    with _registry_lock():  # read, change and write as one step: registrations made at the same time all land
        user = _user_entries()
        _refuse_taken_name(user, name, overwrite)
        replaced = user.get(name)
        user[name] = entry
        _write_user_entries(user)
    if replaced is not None and replaced.source == "url" and _cached_path(replaced) != _cached_path(entry):
        _cached_path(replaced).unlink(missing_ok=True)  # the download of the replaced entry: nothing loads it now
    return entry


def _refuse_taken_name(user: dict[str, RegistryEntry], name: str, overwrite: bool) -> None:
    if name in user and not overwrite:
        msg = f"A model named {name!r} is already registered; pass overwrite=True to replace it."
        raise ValueError(msg)


def _registry_lock():
    """An exclusive lock on the user registry, across threads and processes (a lock file beside it)."""
    from filelock import FileLock

    lock_file = _cache_folder() / f"{_USER_REGISTRY}.lock"
    return FileLock(str(lock_file), timeout=60)


def _check_name(name: str) -> None:
    """Refuse names that are empty, padded or unprintable, built in (any case), or look like file paths.

    Such names would shadow files in :func:`load`, or read as another model in listings.
    """
    if not isinstance(name, str) or not name.strip():
        msg = f"A model name must be a non-empty string, got {name!r}: choose a name such as 'my-model'."
        raise ValueError(msg)
    if name != name.strip() or not name.isprintable():
        msg = (
            f"Model name {name!r} has leading or trailing spaces or non-printing characters, so it would look like "
            "another name in listings; choose a plain name such as 'my-model'."
        )
        raise ValueError(msg)
    builtin = {known.casefold(): known for known in _builtin_entries()}
    if name.casefold() in builtin:
        msg = f"{name!r} is (or reads as) the built-in model name {builtin[name.casefold()]!r}; choose another name."
        raise ValueError(msg)
    if _looks_like_path(name) or "://" in name:
        msg = (
            f"Model name {name!r} looks like a file path (it holds '/' or '\\', or ends in '.safetensors'), so "
            "pf.models.load would read it as a path. Choose a plain name such as 'my-model'; the file or URL "
            "goes in the second argument."
        )
        raise ValueError(msg)


def _local_entry(name: str, path: Path, sha256: str | None, description: str) -> RegistryEntry:
    """The entry of a local checkpoint file, which is read (validated) and checksummed first."""
    checkpoint = read_checkpoint(path)
    got = sha256sum(path)
    if sha256 and sha256 != got:
        msg = f"Checksum mismatch for {str(path)!r}: expected sha256 {sha256}, got {got}."
        raise ValueError(msg)
    return RegistryEntry(
        name=name,
        sha256=got,
        path=str(path),
        description=description,
        size=path.stat().st_size,
        config=checkpoint.config.to_dict(),
    )


def _write_user_entries(entries: dict[str, RegistryEntry]) -> None:
    """Replace the user registry atomically (a half-written registry would lose every registration)."""
    registry_file = _cache_folder() / _USER_REGISTRY
    text = json.dumps([asdict(e) for e in entries.values()], indent=2)
    tmp = None
    try:
        # a name of its own: another writer's partial file is never replaced or moved into place by this one
        handle, tmp = tempfile.mkstemp(dir=registry_file.parent, prefix=f"{_USER_REGISTRY}.", suffix=".partial")
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
        give_usual_permissions(Path(tmp))
        Path(tmp).replace(registry_file)
    except OSError as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise _cache_error(Path(settings.cache_dir), err) from err


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
        file = _cached_path(entry) if entry.source == "url" else _locate(entry)
        local = file.is_file() and os.access(file, os.R_OK)
        size = entry.size or (file.stat().st_size if local else None)  # a URL entry's size once downloaded
        rows.append(
            {
                "name": entry.name,
                "version": entry.version,
                "source": entry.source,
                "available_offline": local,
                "size_mb": round(size / 1e6, 2) if size else None,
                "d_model": config.get("d_model"),
                "n_genes": config.get("n_genes"),
                "description": entry.description,
            }
        )
    table = pd.DataFrame(rows)
    for column in ("d_model", "n_genes"):  # integers, missing for URL entries: 128, not 128.0
        table[column] = table[column].astype("Int64")
    return table


def describe(name_or_path: str | Path = DEFAULT_MODEL) -> dict[str, Any]:
    """Everything known about a checkpoint: registry entry, config, parameter count, vocabulary size, training.

    The checkpoint's provenance comes along, e.g. the bundled model's training data and its held-out evaluation
    (``"metrics"``: kNN accuracy and AvgBIO of the trained network, random weights and PCA per dataset).

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
    builtin = _builtin_entries()  # checked first: describing a built-in model never reads the user registry
    if name not in builtin and name in CONFIGS and name not in _user_entries() and not Path(name).exists():
        vocab_size = len(load(DEFAULT_MODEL).vocab) if DEFAULT_MODEL in builtin else CONFIGS[name].vocab_size
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
    entry = builtin.get(name) or _user_entries().get(name)
    registered = {"version": entry.version, "description": entry.description} if entry else {}
    return {
        "name": model.name,
        **registered,
        "checkpoint": str(model.path),
        "sha256": model.sha256,
        "n_parameters": network.n_parameters(),
        "vocab_size": len(model.vocab),
        "config": model.config.to_dict(),
        **{k: v for k, v in model.info.items() if k != "name"},
    }
