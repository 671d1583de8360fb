"""Checkpoint files: ``.safetensors`` weights plus string metadata (config, vocabulary, provenance)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._paths import give_usual_permissions
from ..data.vocab import GeneVocabulary

if TYPE_CHECKING:
    import torch

    from ..nn import PanFoMa, PanFoMaConfig

__all__ = ["FORMAT_VERSION", "Checkpoint", "read_checkpoint", "sha256sum", "write_checkpoint"]

#: Bumped when the file layout changes incompatibly; files with a larger number are refused.
FORMAT_VERSION = 1

#: State-dict prefix of task heads (e.g. a fine-tuned classifier) stored beside the network's weights.
HEADS_PREFIX = "heads."


def sha256sum(path: str | Path, *, block: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in blocks.

    Parameters
    ----------
    path
        The file.
    block
        Bytes read at a time.

    Returns
    -------
    The hex digest.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class Checkpoint:
    """A checkpoint's contents."""

    state_dict: dict[str, torch.Tensor]
    config: PanFoMaConfig
    vocab: GeneVocabulary
    info: dict[str, Any] = field(default_factory=dict)  # name, trained_on, metrics, versions

    def build_model(self, device: str | torch.device = "cpu") -> PanFoMa:
        """Instantiate the network with these weights (float32, eval mode)."""
        import torch

        from ..nn import PanFoMa

        with torch.random.fork_rng(devices=[]):  # the random initialization is replaced: leave the user's generator
            model = PanFoMa(self.config)
        state = {k: v.to(torch.float32) for k, v in self.state_dict.items() if not k.startswith(HEADS_PREFIX)}
        model.load_state_dict(state, strict=True)
        return model.to(device).eval()

    def head_state(self, name: str) -> dict[str, torch.Tensor]:
        """Float32 weights of the task head ``name`` stored beside the network (empty when there is none)."""
        import torch

        prefix = f"{HEADS_PREFIX}{name}."
        return {k[len(prefix) :]: v.to(torch.float32) for k, v in self.state_dict.items() if k.startswith(prefix)}


def write_checkpoint(
    path: str | Path,
    model: PanFoMa,
    vocab: GeneVocabulary,
    *,
    info: dict[str, Any] | None = None,
    half_precision: bool = False,
    heads: dict[str, torch.nn.Module] | None = None,
) -> str:
    """Write ``model`` and its vocabulary to ``path`` (``.safetensors``); returns the file's SHA-256.

    Parameters
    ----------
    path
        Target file.
    model
        The network.
    vocab
        Its vocabulary (``len(vocab) == model.config.vocab_size``).
    info
        JSON-able provenance: ``name``, ``trained_on``, ``metrics``, ...
    half_precision
        Store float tensors as float16 (half the size; loading casts back to float32).
    heads
        Task heads to store with the network, by name (read back with :meth:`Checkpoint.head_state`).
    """
    import torch
    from safetensors.torch import save_file

    from .._version import __version__

    if len(vocab) != model.config.vocab_size:
        msg = f"Vocabulary has {len(vocab)} tokens but the model expects {model.config.vocab_size}."
        raise ValueError(msg)
    tensors = dict(model.state_dict())
    for name, head in (heads or {}).items():
        tensors |= {f"{HEADS_PREFIX}{name}.{key}": value for key, value in head.state_dict().items()}
    state = {}
    for key, tensor in tensors.items():
        tensor = tensor.detach().to("cpu").contiguous()
        if half_precision and tensor.is_floating_point():
            tensor = tensor.to(torch.float16)
        state[key] = tensor
    metadata = {
        "format_version": str(FORMAT_VERSION),
        "panfoma_sc_version": __version__,
        "config": model.config.to_json(),
        "vocab": vocab.to_json(),
        "info": json.dumps(info or {}),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".partial")
    save_file(state, str(tmp), metadata=metadata)
    give_usual_permissions(tmp)  # safetensors writes 0600
    tmp.replace(path)  # never leave a half-written checkpoint under the real name
    return sha256sum(path)


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint written by :func:`write_checkpoint`.

    Parameters
    ----------
    path
        The ``.safetensors`` file.

    Returns
    -------
    Weights, config, vocabulary and provenance.

    Raises
    ------
    FileNotFoundError
        No such file, or ``path`` is a folder.
    ValueError
        Not a safetensors file (another kind of file, or truncated), not a panfoma-sc checkpoint, or written
        by a newer, incompatible release.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    from ..nn import PanFoMaConfig

    path = Path(path)
    _check_is_file(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
        state = load_file(str(path))
    except Exception as err:
        raise ValueError(_unreadable_message(path, err)) from err
    if "config" not in metadata or "vocab" not in metadata:
        msg = f"{str(path)!r} is a safetensors file but not a panfoma-sc checkpoint (no config/vocab metadata)."
        raise ValueError(msg)
    file_format = int(metadata.get("format_version", "1"))
    if file_format > FORMAT_VERSION:
        msg = (
            f"{str(path)!r} uses checkpoint format {file_format}, newer than this panfoma-sc supports "
            f"({FORMAT_VERSION}); it was written by panfoma-sc {metadata.get('panfoma_sc_version')}. "
            "Upgrade with `pip install -U panfoma-sc`."
        )
        raise ValueError(msg)
    config = PanFoMaConfig.from_dict(json.loads(metadata["config"]))
    vocab = GeneVocabulary.from_json(metadata["vocab"])
    info = json.loads(metadata.get("info", "{}"))
    info["panfoma_sc_version"] = metadata.get("panfoma_sc_version")
    return Checkpoint(state_dict=state, config=config, vocab=vocab, info=info)


def _check_is_file(path: Path) -> None:
    """Refuse a missing path, or a folder, with the fix: a checkpoint is one ``.safetensors`` file."""
    if path.is_dir():
        inside = sorted(p.name for p in path.glob("*.safetensors"))
        hint = f" It holds {inside}: pass one of them." if inside else ""
        msg = f"Checkpoint {str(path)!r} is a folder: pass the path of a .safetensors checkpoint file.{hint}"
        raise FileNotFoundError(msg)  # the type of a missing file, as _paths.check_input_file: one thing to catch
    if not path.is_file():
        msg = f"Checkpoint file {str(path)!r} does not exist."
        raise FileNotFoundError(msg)


def _unreadable_message(path: Path, err: Exception) -> str:
    """Why ``path`` is not a checkpoint, without assuming where it came from (a download, or the user's own file)."""
    if path.suffix != ".safetensors":
        what = f"it is a {path.suffix or 'extension-less'} file, not a .safetensors checkpoint"
    else:
        what = "it may be truncated or corrupted"
    return (
        f"{str(path)!r} is not a readable .safetensors file ({err}): {what}. Pass a checkpoint written by "
        "panfoma-sc (pf.models.write_checkpoint, PretrainedModel.save or `panfoma pretrain`)."
    )
