"""From AnnData rows to token batches: gene vocabulary, tokenizer, row streaming, background prefetching."""

from .prefetch import Prefetcher
from .rows import GeneColumns, expression_matrix, iter_row_blocks
from .tokenizer import TokenBatch, Tokenizer, bin_by_rank, cell_keys_from_names, hash_uniform
from .vocab import SPECIAL_TOKENS, GeneVocabulary, normalize_gene_name

__all__ = [
    "SPECIAL_TOKENS",
    "GeneColumns",
    "GeneVocabulary",
    "Prefetcher",
    "TokenBatch",
    "Tokenizer",
    "bin_by_rank",
    "cell_keys_from_names",
    "expression_matrix",
    "hash_uniform",
    "iter_row_blocks",
    "normalize_gene_name",
]
