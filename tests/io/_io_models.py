"""Models and inputs the io tests share (imported by the test modules of this folder)."""

import numpy as np


def trained_like(builder, seed=0):
    """A model whose weights and BatchNorm statistics differ from any fresh one."""
    model = builder(rng=np.random.default_rng(seed))
    x = np.random.default_rng(seed + 1).random((16, 1, 8, 8), dtype=np.float32)
    model.train()
    model(x)  # updates BatchNorm running statistics and num_batches_tracked
    for p in model.parameters():
        p.data = p.data + np.float32(0.01)
    return model.eval()


def images(n=7):
    """n digit-shaped float32 inputs, [n, 1, 8, 8]."""
    return np.random.default_rng(5).random((n, 1, 8, 8), dtype=np.float32)
