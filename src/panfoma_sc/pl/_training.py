"""Training-curve plot of a pretraining run (its ``history.csv``) or of any table with loss columns."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from .._arguments import require_integer

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["training_curve"]


def training_curve(
    history: pd.DataFrame | str | Path,
    *,
    columns: str | Sequence[str] | None = None,
    smooth: int = 20,
    ax: Axes | None = None,
    show: bool | None = None,
    save: bool | str | None = None,
    return_fig: bool = False,
) -> Figure | Axes | None:
    """Plot losses against training steps.

    Parameters
    ----------
    history
        The run's ``history.csv`` (its path, the run's output folder, or a DataFrame) with a ``step`` column.
    columns
        Loss column or columns to draw (default: every ``loss_*`` column, e.g. value, MVC, contrastive, batch).
    smooth
        Rolling-mean window in logged steps, an integer >= 1 (1 = raw).
    ax
        Axes to draw into.
    show
        Show the figure (default: when no ``ax`` is given and not returning).
    save
        Save the figure in ``sc.settings.figdir``, named as scanpy's plots (and :func:`panfoma_sc.pl.embedding`)
        name theirs: ``True`` writes ``training_curve.{sc.settings.file_format_figs}``, a string is appended
        to ``training_curve`` (``save="_run1.png"`` writes ``training_curve_run1.png``). Default:
        ``sc.settings.autosave``.
    return_fig
        Return the figure instead of the axes.

    Returns
    -------
    The figure or axes when ``show`` is False.

    Examples
    --------
    >>> import panfoma_sc as pf
    >>> pf.pl.training_curve("runs/pretrain", save="_pretrain.png", show=False)  # doctest: +SKIP
    """
    import matplotlib.pyplot as plt
    from scanpy.plotting._utils import savefig_or_show  # scanpy's own file naming, as sc.pl.* and pl.embedding

    require_integer("smooth", smooth, 1)
    columns = (columns,) if isinstance(columns, str) else None if columns is None else tuple(columns)
    if isinstance(history, str | Path):
        path = Path(history)
        path = path / "history.csv" if path.is_dir() else path
        if not path.is_file():
            msg = f"No training history at {str(path)!r}: pass a pretraining output folder or its history.csv."
            raise FileNotFoundError(msg)
        frame = pd.read_csv(path)
    else:
        frame = history
    if columns is None:
        columns = tuple(c for c in frame.columns if c.startswith("loss_"))
    if not columns:
        msg = (
            f"history has no loss_* column to draw; it has {list(frame.columns)}. Pass the history.csv of a "
            "panfoma pretraining run, or name the columns to draw (with a step column), e.g. columns=('my_loss',)."
        )
        raise ValueError(msg)
    missing = [c for c in ("step", *columns) if c not in frame.columns]
    if missing:
        msg = f"history has no column(s) {missing}; it has {list(frame.columns)}."
        raise KeyError(msg)
    not_numeric = [c for c in ("step", *columns) if not pd.api.types.is_numeric_dtype(frame[c])]
    if not_numeric:
        msg = f"history column(s) {not_numeric} are not numeric: pass step and loss columns of numbers."
        raise ValueError(msg)
    if frame.empty:
        msg = "history has no rows: the run logged no step yet (its history.csv fills as training runs)."
        raise ValueError(msg)
    own_axes = ax is None
    if ax is None:
        fig, ax = plt.subplots(figsize=(5, 3.2))
    else:
        fig = ax.figure
    for column in columns:
        values = frame[column].rolling(int(smooth), min_periods=1).mean()
        ax.plot(frame["step"], values, label=column)
    ax.set_xlabel("step")
    ax.set_ylabel("loss" if smooth == 1 else f"loss (mean of {smooth} logged steps)")
    ax.legend(frameon=False)
    if show is None:
        show = not return_fig and own_axes
    plt.figure(fig)  # scanpy saves the current figure; a figure of the caller's ``ax`` may not be current
    savefig_or_show("training_curve", show=show, save=save)
    if show:
        return None
    return fig if return_fig else ax
