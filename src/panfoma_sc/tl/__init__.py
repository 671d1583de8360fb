"""Tools: AnnData in, results written into ``obsm`` / ``obs`` / ``uns``."""

from ._annotate import annotate
from ._embed import embed
from ._integrate import integrate

__all__ = ["annotate", "embed", "integrate"]
