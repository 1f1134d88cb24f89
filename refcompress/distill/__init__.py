"""refcompress.distill: knowledge distillation in NumPy.

* :mod:`.soft` — soft targets with temperature (Hinton et al. 2015):
  :func:`soft_target_loss`, :func:`distillation_loss`;
* :mod:`.attention` — attention transfer for CNN feature maps (Zagoruyko & Komodakis 2017):
  :func:`spatial_attention`, :func:`attention_transfer_loss`; attention-probability KL for
  attention layers (MiniLM): :func:`attention_probability_loss`;
* :mod:`.hints` — FitNets hints with a trainable regressor (Romero et al. 2015):
  :func:`hint_loss`, :func:`make_regressor`, :class:`Hint`;
* :mod:`.taps` — :class:`Taps`: read inner outputs and inject their loss gradients;
* :mod:`.trainer` — :class:`Distiller` / :func:`distill`: the mixed objective trained with
  :func:`refcompress.nn.fit`;
* :mod:`.recovery` — :func:`recover`: fine-tune a compressed model against its original.

Every loss returns ``(value, grad)`` like :mod:`refcompress.nn.losses`.  See
docs/distillation.md.
"""

from .attention import attention_probability_loss, attention_transfer_loss, spatial_attention
from .hints import Hint, hint_loss, make_regressor
from .recovery import recover
from .soft import distillation_loss, soft_target_loss
from .taps import Taps
from .trainer import UNLABELED, Distiller, distill

__all__ = [
    "soft_target_loss", "distillation_loss",
    "spatial_attention", "attention_transfer_loss", "attention_probability_loss",
    "hint_loss", "make_regressor", "Hint",
    "Taps", "Distiller", "distill", "recover", "UNLABELED",
]
