"""Distillation as recovery: fine-tune a compressed model against its original.

After pruning, fake-quantization or low-rank factoring, the compressed model has lost some
accuracy; its uncompressed original is the best teacher available (same architecture
family, same data, same classes), and its soft outputs carry more information per sample
than the labels (Hinton et al. 2015), so a few epochs of KD on the training inputs —
labels optional — recover most of the loss (cf. Mishra & Marr 2018, "Apprentice";
Polino et al. 2018, "Model compression via distillation and quantization").

Nothing here knows how the model was compressed: pruning masks live in Parameter grad and
post-step hooks, fake-quant in forward hooks with a straight-through backward, factored
layers are ordinary modules, and the toolkit's optimizers honour all of them.  The only
requirement is two :class:`refcompress.nn.Module` with the same input and output shapes.
"""

from __future__ import annotations

import numpy as np

from .._validation import check_array, check_int
from ..errors import DTypeError, ShapeError
from ..nn import Module
from ..nn.module import training_modes
from .trainer import Distiller

__all__ = ["recover"]


def recover(compressed: Module, original: Module, X, y=None, *, epochs: int = 3,
            lr: float = 1e-3, weight_decay: float = 0.0, temperature: float = 2.0,
            alpha: float | None = None, batch_size: int = 64, validation_data=None,
            patience: int | None = None, optimizer=None, seed: int = 0, progress: bool = False):
    """Fine-tune ``compressed`` in place with ``original`` as a frozen teacher.

    compressed, original : nn Modules mapping X [N, ...] to logits [N, C] of equal shape.
    X, y        : training inputs and optional int labels (y None: pure KD, alpha = 0).
    alpha       : CE weight in the convex mix with KD; default 0 without labels, 0.5 with.
    Everything else as :meth:`Distiller.fit`.  Returns the :class:`Distiller` (its
    ``history_`` has the per-epoch loss and validation metrics).

    The output shapes are compared on the first two samples before any update, so a
    wrong pairing fails fast with a ShapeError naming ``compressed``.
    """
    for m, name in ((compressed, "compressed"), (original, "original")):
        if not isinstance(m, Module):
            raise DTypeError(f"{name}: expected an nn Module, got {type(m).__name__}")
    X = check_array(X, "X", min_ndim=2)
    if len(X) == 0:
        raise ShapeError(f"X: expected at least one sample, got shape {X.shape}")
    check_int(epochs, "epochs", min_value=1)
    probe = X[:2]
    outs = []
    for m in (compressed, original):
        with training_modes(m):
            m.eval()
            outs.append(np.asarray(m(probe)))
    if outs[0].shape != outs[1].shape:
        raise ShapeError(
            f"compressed: outputs shape {outs[0].shape[1:]} per sample but original outputs "
            f"{outs[1].shape[1:]}; recovery needs the same output shape (same classes)")
    if alpha is None:
        alpha = 0.0 if y is None else 0.5
    d = Distiller(compressed, original, alpha=alpha, temperature=temperature, seed=seed)
    d.fit(X, y, optimizer=optimizer, lr=lr, weight_decay=weight_decay, epochs=epochs,
          batch_size=batch_size, validation_data=validation_data, patience=patience,
          progress=progress)
    return d
