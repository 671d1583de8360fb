"""Tools: AnnData in, results written into ``obsm`` / ``obs`` / ``uns``."""

from ._embed import embed

__all__ = ["embed"]
