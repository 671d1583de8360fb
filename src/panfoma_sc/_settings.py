"""Package-wide defaults: device, batch size, precision, prefetching, cache and data folders."""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

import numpy as np

from ._arguments import is_integer

__all__ = ["PRECISIONS", "Settings", "settings", "torch_threads"]

#: Accepted values of ``precision``: ``"auto"`` is bf16 autocast on CUDA GPUs of compute capability 8.0 or later
#: and float32 elsewhere.
PRECISIONS = ("auto", "fp32", "bf16")


def _env_path(name: str) -> Path | None:
    """The folder named by environment variable ``name``; unset and empty (``NAME=""``) both mean ``None``."""
    value = os.environ.get(name, "")
    return Path(value).expanduser() if value else None


def _default_cache_dir() -> Path:
    # an empty PANFOMA_CACHE_DIR would otherwise be Path(""), the current folder
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return _env_path("PANFOMA_CACHE_DIR") or Path(base) / "panfoma-sc"


def _cuda_has_bf16(device: str) -> bool:
    """Whether CUDA ``device`` computes in bf16 natively (compute capability 8.0, Ampere, or later).

    Not ``torch.cuda.is_bf16_supported()``: it counts emulation, so it is true on a T4 or V100, where bf16 is
    slower than float32 and ``mamba_ssm``'s Triton scan does not compile (``.bf16`` needs ``sm_80``).
    """
    import torch

    return torch.cuda.is_available() and torch.cuda.get_device_capability(torch.device(device)) >= (8, 0)


def _check_device(name: str) -> None:
    """Raise a ``ValueError`` naming the problem and the fix when torch cannot run on device ``name`` here."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError as error:
        msg = f"device={name!r} is not a torch device ({error}). Use 'cpu', 'cuda', 'cuda:0', 'mps' or 'auto'."
        raise ValueError(msg) from None
    if device.type not in ("cpu", "cuda", "mps"):
        msg = f"device={name!r}: PanFoMa runs on 'cpu', 'cuda' (e.g. 'cuda:0') or 'mps'; use one of them, or 'auto'."
        raise ValueError(msg)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch was built without CUDA" if torch.version.cuda is None else "torch sees no CUDA GPU"
            msg = f"device={name!r} was requested, but {why}. Use device='cpu', or 'auto' to pick what is available."
            raise ValueError(msg)
        if device.index is not None and device.index >= torch.cuda.device_count():
            msg = (
                f"device={name!r} was requested, but this machine has {torch.cuda.device_count()} CUDA device(s) "
                f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})."
            )
            raise ValueError(msg)
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        msg = f"device={name!r} was requested, but Apple MPS is not available here. Use device='cpu' or 'auto'."
        raise ValueError(msg)


_DEVICE = re.compile(r"^(auto|cpu(:\d+)?|mps(:0)?|cuda(:\d+)?)$")


def _setting_error(name: str, value: object, expected: str) -> ValueError:
    return ValueError(f"pf.settings.{name}={value!r}: use {expected}.")


def _checked_setting(name: str, value: object) -> object:
    """``value`` as stored for setting ``name``, or an error naming the setting, the value and what it takes.

    Folders become ``Path``; an empty folder means unset, as for the environment variables (``Path("")`` is the
    current folder, where registrations would land unseen).
    """
    names = [setting.name for setting in fields(Settings)]
    if name not in names:
        close = difflib.get_close_matches(name, names, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        msg = f"pf.settings has no setting {name!r}.{hint} Settings: {names}."
        raise AttributeError(msg)
    if name in ("cache_dir", "data_dir"):
        if value is None or value == "":
            return _default_cache_dir() if name == "cache_dir" else None
        if not isinstance(value, (str, os.PathLike)):
            raise _setting_error(name, value, "a folder path (str or pathlib.Path), or None for the default")
        return Path(value).expanduser()
    if name == "device":
        if type(value).__name__ == "device" and type(value).__module__.startswith("torch"):
            value = str(value)
        if not isinstance(value, str) or not _DEVICE.match(value):
            raise _setting_error(name, value, "'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
        return value
    if name == "precision":
        if value not in PRECISIONS:
            raise _setting_error(name, value, f"one of {PRECISIONS}")
        return value
    if name == "activation_checkpointing":
        if not isinstance(value, (bool, np.bool_)):
            raise _setting_error(name, value, "True or False")
        return bool(value)
    lowest = {"batch_size": 1, "n_threads": 1, "prefetch": 0}[name]
    if value is None and name != "batch_size":
        return None
    if not is_integer(value) or value < lowest:
        default = ", or None for the default" if name != "batch_size" else ""
        raise _setting_error(name, value, f"an integer >= {lowest}{default}")
    return int(value)


@dataclass
class Settings:
    """Defaults used when a function's argument is left at ``None``.

    Values are checked when they are set (a misspelt setting or a wrong value is an error on that line);
    :meth:`reset` restores the defaults. Change the attributes of ``pf.settings``: the tools read that one
    object, so binding a new ``Settings`` to the name changes nothing.

    Attributes
    ----------
    device
        ``"auto"`` (CUDA, else CPU) or a torch device string. Apple MPS (``"mps"``) runs only when named and has
        not been tested on a Mac.
    batch_size
        Cells read and tokenized together, and per forward pass on a GPU; on CPU each forward pass holds about
        1,024 tokens (4 cells at 256 genes per cell), whatever the batch size, which is faster there. Fine-tuning
        steps use their own default (32).
    precision
        Inference arithmetic of the embedding tools: ``"auto"`` (bf16 autocast on a CUDA GPU of compute
        capability 8.0 or later, such as an A100 or H100; float32 elsewhere, including a T4 or V100),
        ``"fp32"`` or ``"bf16"`` (CUDA only). Results are float32 either way.
    prefetch
        Batches read and tokenized ahead, in a background thread, while the model runs the current one;
        ``0`` does it in the calling thread; ``None`` (default): 1 on a GPU, 0 on CPU, where the thread
        measured no gain (it competes with the model's own Python work for the GIL). Does not change results.
    cache_dir
        Where downloaded checkpoints and user registrations live (env ``PANFOMA_CACHE_DIR``; unset or empty:
        ``$XDG_CACHE_HOME/panfoma-sc``, else ``~/.cache/panfoma-sc``). Set it to a path (``~`` expanded);
        ``None`` or ``""`` sets the default again.
    data_dir
        Folder of real datasets for :mod:`panfoma_sc.datasets` (env ``PANFOMA_DATA_DIR``; unset or empty: none).
        ``None`` or ``""`` unsets it.
    n_threads
        CPU threads torch uses while panfoma-sc runs a model (embedding, fine-tuning, pretraining); ``None``
        (default): ``$OMP_NUM_THREADS`` when it is set, else torch's own setting. The count is set for the run
        and restored afterwards. Other libraries can change torch's count behind the user's back: numba's OpenMP
        layer (used by ``sc.pp.neighbors`` and ``sc.tl.umap``) sets it to every core, ignoring
        ``OMP_NUM_THREADS``.
    activation_checkpointing
        Fine-tuning (``pf.tl.annotate(method="finetune")``, ``pf.tl.integrate``, the joint multi-omics model) and
        pretraining recompute each layer's activations in the backward pass instead of keeping them: about a third
        of the training memory for up to 1.2x the time, the same gradients. Default False. A pretraining run's own
        ``TrainingConfig.activation_checkpointing`` (``--activation-checkpointing``) overrides it.

    Examples
    --------
    >>> import panfoma_sc as pf
    >>> pf.settings.batch_size = 128
    >>> pf.settings.device = "cpu"
    >>> pf.settings.reset()
    """

    device: str = "auto"
    batch_size: int = 64
    precision: str = "auto"
    prefetch: int | None = None
    cache_dir: Path = field(default_factory=_default_cache_dir)
    data_dir: Path | None = field(default_factory=lambda: _env_path("PANFOMA_DATA_DIR"))
    n_threads: int | None = None
    activation_checkpointing: bool = False

    def __setattr__(self, name: str, value) -> None:
        super().__setattr__(name, _checked_setting(name, value))

    def reset(self) -> None:
        """Restore every setting to its default (the folders from their environment variables again)."""
        for setting in fields(self):
            value = setting.default_factory() if setting.default is MISSING else setting.default
            setattr(self, setting.name, value)

    def resolve_device(self, device: str | None = None) -> str:
        """Device name to run on: ``device`` if given, else :attr:`device`, with ``"auto"`` resolved.

        An explicit device that this machine does not have (a typo, ``"cuda"`` without a GPU or with a CPU-only
        torch, ``"cuda:3"`` on a one-GPU machine) is a ``ValueError`` that says what is available.
        """
        import torch

        choice = self.device if device is None else device
        if isinstance(choice, torch.device):
            choice = str(choice)
        if not isinstance(choice, str):  # 0 or True would otherwise pass as "auto" or as cuda:0
            msg = f"device must be a string such as 'cpu', 'cuda', 'cuda:0', 'mps' or 'auto', got {choice!r}."
            raise ValueError(msg)
        if choice != "auto":
            _check_device(choice)
            return choice

        # Apple MPS only when asked for: it has not been tested on a Mac (no float64 there, so the PyTorch scan
        # accumulates in float32 on it), and the CPU path is the one that is
        return "cuda" if torch.cuda.is_available() else "cpu"

    def resolve_prefetch(self, prefetch: int | None, device: str) -> int:
        """Batches to prepare ahead: ``prefetch`` if given, else :attr:`prefetch`, ``None`` resolved for ``device``."""
        choice = self.prefetch if prefetch is None else prefetch
        if choice is None:
            return 0 if str(device).split(":")[0] == "cpu" else 1
        return choice

    def resolve_precision(self, precision: str | None, device: str) -> str:
        """``"bf16"`` or ``"fp32"``: ``precision`` if given, else :attr:`precision`, ``"auto"`` resolved for ``device``.

        bf16 autocast runs on CUDA only: on CPU it is slower than float32 (no bf16 matrix units on most
        CPUs) and it would silently change results, so asking for it there is an error.
        """
        choice = precision or self.precision
        if choice not in PRECISIONS:
            msg = f"precision must be one of {PRECISIONS}, got {choice!r}."
            raise ValueError(msg)
        on_cuda = str(device).split(":")[0] == "cuda"
        if choice == "auto":
            return "bf16" if on_cuda and _cuda_has_bf16(device) else "fp32"
        if choice == "bf16" and not on_cuda:
            msg = (
                f"precision='bf16' (autocast) runs on CUDA only, but the device is {device!r}. "
                "Pass precision='fp32' (or 'auto', which picks bf16 on recent CUDA GPUs and fp32 elsewhere), "
                "or device='cuda'."
            )
            raise ValueError(msg)
        return choice

    def resolve_threads(self) -> int | None:
        """Torch CPU threads to run models with.

        :attr:`n_threads`, else ``$OMP_NUM_THREADS``, else ``None`` (leave torch's count as it is).
        """
        if self.n_threads is not None:  # an integer >= 1: checked when set
            return self.n_threads
        value = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()  # OpenMP also accepts "4,2"
        return int(value) if value.isdigit() and int(value) >= 1 else None


settings = Settings()


@contextmanager
def torch_threads() -> Iterator[None]:
    """Run the block with torch's CPU thread count at :meth:`Settings.resolve_threads`, restored afterwards."""
    import torch

    wanted, before = settings.resolve_threads(), torch.get_num_threads()
    if wanted is not None:
        torch.set_num_threads(wanted)
    try:
        yield
    finally:
        torch.set_num_threads(before)
