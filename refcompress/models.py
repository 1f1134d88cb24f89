"""The two reference models and their training recipe on the digits data.

``mlp_300_100``  Flatten, Linear 64->300, ReLU, Linear 300->100, ReLU, Linear 100->10
                 (the LeNet-300-100 shape of LeCun et al. 1998 and Han et al. 2015, on 8x8
                 inputs): 50,610 parameters, 50,200 MACs per sample.
``small_cnn``    Conv 1->16 3x3 pad 1, BatchNorm, ReLU, Conv 16->32 3x3 pad 1, BatchNorm,
                 ReLU, MaxPool 2, Flatten, Linear 512->10: 10,026 parameters (plus 96
                 BatchNorm running statistics), 309,248 MACs per sample.

Both take (N, 1, 8, 8) float32 images (the MLP also takes (N, 64) rows) and return
(N, 10) logits.  :func:`train_reference` trains one with AdamW on the fixed digits
split (cosine learning-rate decay, early stopping on validation loss) and reports the
test accuracy.
"""

from __future__ import annotations

import contextlib

import numpy as np

from . import nn
from ._validation import check_choice, check_int
from .data import Digits, load_digits
from .errors import DTypeError

__all__ = ["mlp_300_100", "small_cnn", "REFERENCE_MODELS", "TRAINING_RECIPE", "train_reference",
           "blas_threads"]


@contextlib.contextmanager
def blas_threads(threads):
    """Limit NumPy's BLAS to ``threads`` threads inside a ``with`` block (None: no change).

    Uses threadpoolctl (installed with scikit-learn); without it this does nothing, which
    changes speed only.  The reference models' matrices are small: one BLAS thread trains
    them faster than several, and on a busy machine waiting BLAS threads can make a batch
    of 64 a hundred times slower.
    """
    if threads is None:
        yield
        return
    threads = check_int(threads, "threads", min_value=1)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=threads, user_api="blas"):
        yield


def _rng(rng):
    if rng is None or isinstance(rng, np.random.Generator):
        return rng
    raise DTypeError(f"rng: expected a numpy.random.Generator or None, got {type(rng).__name__}")


def mlp_300_100(rng=None) -> nn.Sequential:
    """Flatten, Linear(64, 300), ReLU, Linear(300, 100), ReLU, Linear(100, 10).

    rng : numpy.random.Generator for the initial weights, or None for the shared
          generator of :func:`refcompress.nn.manual_seed`.
    State-dict names: "1.weight" [300, 64], "1.bias", "3.weight" [100, 300], "3.bias",
    "5.weight" [10, 100], "5.bias" (float32).
    """
    rng = _rng(rng)
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(64, 300, rng=rng), nn.ReLU(),
        nn.Linear(300, 100, rng=rng), nn.ReLU(),
        nn.Linear(100, 10, rng=rng),
    )


def small_cnn(rng=None) -> nn.Sequential:
    """Conv(1, 16, 3, pad 1), BN, ReLU, Conv(16, 32, 3, pad 1), BN, ReLU, MaxPool(2),
    Flatten, Linear(32*4*4, 10): (N, 1, 8, 8) -> (N, 10).

    rng : as for :func:`mlp_300_100`.
    State-dict names: "0.weight" [16, 1, 3, 3], "0.bias", "1.*" (BatchNorm2d(16): weight,
    bias, running_mean, running_var, num_batches_tracked), "3.weight" [32, 16, 3, 3],
    "3.bias", "4.*" (BatchNorm2d(32)), "8.weight" [10, 512], "8.bias".
    """
    rng = _rng(rng)
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1, rng=rng), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1, rng=rng), nn.BatchNorm2d(32), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 10, rng=rng),
    )


REFERENCE_MODELS = {"mlp_300_100": mlp_300_100, "small_cnn": small_cnn}

# One recipe per model: AdamW with a cosine learning-rate decay over `epochs` epochs of
# mini-batches, early stopping when the validation loss has not improved for `patience`
# epochs (the best epoch's weights are restored).  Chosen so that the 5-seed mean test
# accuracy is >= 97 % for both models (docs/data.md lists the measured numbers).
TRAINING_RECIPE = {
    "mlp_300_100": {"lr": 3e-3, "weight_decay": 1e-4, "epochs": 40, "batch_size": 64, "patience": 10,
                    "cosine": True, "monitor": "val_loss"},
    "small_cnn": {"lr": 3e-3, "weight_decay": 1e-4, "epochs": 20, "batch_size": 64, "patience": 6,
                  "cosine": True, "monitor": "val_loss"},
}


def train_reference(name: str, seed: int = 0, *, epochs: int | None = None, data=None,
                    threads: int | None = 1, progress: bool = False):
    """Train reference model ``name`` on the digits split; return ``(model, test_accuracy)``.

    name     : "mlp_300_100" or "small_cnn".
    seed     : the initial weights come from ``numpy.random.default_rng(seed)`` and the
               batch order from ``fit(seed=seed)``; the data split is fixed and does not
               depend on it.  The shared generator of ``nn.manual_seed`` is not touched.
    epochs   : override the recipe's maximum number of epochs (e.g. 1 for a smoke run).
    data     : a :class:`refcompress.data.Digits` (image layout) to train on, or None to
               load the digits.
    threads  : BLAS threads while training (see :func:`blas_threads`); None: unchanged.
    progress : print fit's per-epoch progress lines on stderr.

    The model is returned in eval mode; test_accuracy is a float in [0, 1] on the test split.
    """
    check_choice(name, "name", tuple(REFERENCE_MODELS))
    seed = check_int(seed, "seed", min_value=0)
    if threads is not None:
        threads = check_int(threads, "threads", min_value=1)
    recipe = dict(TRAINING_RECIPE[name])
    if epochs is not None:
        recipe["epochs"] = check_int(epochs, "epochs", min_value=1)
    if data is None:
        data = load_digits()
    elif not isinstance(data, Digits):
        raise DTypeError(f"data: expected a refcompress.data.Digits or None, got {type(data).__name__}")
    if data.flat:
        data = data.as_images()
    model = REFERENCE_MODELS[name](rng=np.random.default_rng(seed))
    opt = nn.AdamW(model.parameters(), lr=recipe["lr"], weight_decay=recipe["weight_decay"])
    sched = nn.CosineAnnealingLR(opt, T_max=recipe["epochs"]) if recipe["cosine"] else None
    with blas_threads(threads):
        nn.fit(model, data.X_train, data.y_train, optimizer=opt, epochs=recipe["epochs"],
               batch_size=recipe["batch_size"], seed=seed, validation_data=(data.X_val, data.y_val),
               patience=recipe["patience"], monitor=recipe["monitor"], scheduler=sched,
               progress=progress)
        model.eval()
        return model, float(nn.evaluate(model, data.X_test, data.y_test)["accuracy"])
