"""refcompress.data: the embedded default data set (digits, fixed split), the sentence sets
for transformer fidelity, and batching.

See docs/data.md.
"""

from .batching import iter_batches, n_batches
from .sentences import CALIBRATION_SENTENCES, EVAL_PAIRS, EVAL_SENTENCES, EVAL_SINGLES
from .digits import SPLIT_FRACTIONS, SPLIT_SEED, Digits, load_digits, stratified_split

__all__ = ["Digits", "load_digits", "stratified_split", "SPLIT_SEED", "SPLIT_FRACTIONS",
           "iter_batches", "n_batches",
           "EVAL_SENTENCES", "EVAL_PAIRS", "EVAL_SINGLES", "CALIBRATION_SENTENCES"]
