"""Review-2 fixes in the distillation trainer and losses: teacher cache keyed by batch
contents, train accuracy over labeled samples, label checks, taps after a failed prepare,
very large temperatures, and library errors for edge cases.  Tiny models keep it fast."""

import numpy as np
import pytest

from refcompress import nn
from refcompress.distill import UNLABELED, Distiller


def _mlp(seed, hidden=6, classes=3, dtype=np.float64):
    r = np.random.default_rng(seed)
    return nn.Sequential(nn.Linear(4, hidden, rng=r), nn.ReLU(),
                         nn.Linear(hidden, classes, rng=r)).to(dtype)


class _BufferLoader:
    """A re-iterable of batches that refills one preallocated buffer for every batch."""

    def __init__(self, X, bs, seed=0):
        self.X, self.bs = X, bs
        self.buf = np.empty((bs,) + X.shape[1:], X.dtype)
        self.rng = np.random.default_rng(seed)

    def __len__(self):
        return len(self.X) // self.bs

    def __iter__(self):
        perm = self.rng.permutation(len(self.X))
        for i in range(len(self)):
            self.buf[...] = self.X[perm[i * self.bs:(i + 1) * self.bs]]
            yield self.buf


def test_teacher_cache_is_keyed_by_batch_contents_not_array_identity():
    X = np.random.default_rng(0).normal(size=(20, 4))
    s, t = _mlp(0), _mlp(1, 8)
    d = Distiller(s, t, alpha=0.0, temperature=1.0)
    seen, orig = [], d.loss_and_backward

    def spy(xb, yb, zt, tf):
        seen.append(np.max(np.abs(zt - t(xb))))
        return orig(xb, yb, zt, tf)
    d.loss_and_backward = spy
    d.fit(_BufferLoader(X, 5), epochs=3, lr=0.0, progress=False)
    assert len(seen) == 12 and max(seen) == 0.0
