"""Preprocessing: input checks and gene matching (no torch here)."""

from ._checks import ExpressionReport, check_expression
from ._genes import GeneMatch, match_genes

__all__ = ["ExpressionReport", "GeneMatch", "check_expression", "match_genes"]
