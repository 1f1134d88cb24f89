"""refcompress.data: the embedded default data set (digits, fixed split) and batching.

See docs/data.md.
"""

from .batching import iter_batches, n_batches
from .digits import SPLIT_FRACTIONS, SPLIT_SEED, Digits, load_digits, stratified_split

__all__ = ["Digits", "load_digits", "stratified_split", "SPLIT_SEED", "SPLIT_FRACTIONS",
           "iter_batches", "n_batches"]
