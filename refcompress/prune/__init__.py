"""refcompress.prune: pruning that ends in smaller and faster models.

* unstructured magnitude pruning, per layer or global, by amount, threshold or Han et al.'s
  quality x std (:mod:`.magnitude`), with masks enforced during fine-tuning (:mod:`.masks`);
* schedules: iterative prune -> fine-tune with an accuracy-drop budget, and Zhu & Gupta's
  gradual (AGP) cubic schedule (:mod:`.schedules`);
* structured neuron / channel pruning by weight norm, mean |activation|, APoZ or Taylor
  importance (:mod:`.structured`), removed physically (:mod:`.surgery`);
* N:M semi-structured sparsity (:mod:`.nm`);
* sensitivity analysis (:mod:`.sensitivity`);
* sparse execution: :class:`SparseLinear` (CSR) and :class:`NMLinear` on the sparse kernels
  (:mod:`.sparse_layers`).

See docs/pruning.md.
"""

from .magnitude import (global_magnitude_prune, global_masks, han_threshold, layer_masks,
                        magnitude_prune, magnitude_scores, mask_by_amount, mask_by_threshold)
from .masks import (apply_mask, apply_masks, get_mask, masked_layers, model_sparsity,
                    prunable_layers, remove_mask, remove_masks, sparsity)
from .nm import is_nm_sparse, nm_mask, nm_masks, nm_permutation, nm_prune, nm_retained
from .schedules import (AGPPruner, IterativeResult, agp_sparsity, cubic_sparsities, geometric_sparsities,
                        iterative_prune)
from .sparsegpt import PruneResult, sparsegpt
from .wanda import wanda, wanda_scores
from .sensitivity import SensitivityResult, sensitivity_analysis
from .sparse_layers import (NMLinear, SparseLinear, csr_stored_bytes, dense_stored_bytes,
                            nm_stored_bytes, to_dense, to_nm, to_sparse)
from .structured import CRITERIA, channel_importance, select_outputs, structured_prune, weight_norm_importance
from .surgery import Link, find_link, leaf_chain, prunable_links, prune_outputs

__all__ = [
    "magnitude_scores", "mask_by_amount", "mask_by_threshold", "han_threshold",
    "layer_masks", "global_masks", "magnitude_prune", "global_magnitude_prune",
    "apply_mask", "apply_masks", "get_mask", "remove_mask", "remove_masks", "masked_layers",
    "prunable_layers", "sparsity", "model_sparsity",
    "nm_mask", "nm_masks", "nm_prune", "is_nm_sparse", "nm_permutation", "nm_retained",
    "agp_sparsity", "geometric_sparsities", "cubic_sparsities", "AGPPruner", "IterativeResult", "iterative_prune",
    "SensitivityResult", "sensitivity_analysis",
    "SparseLinear", "NMLinear", "to_sparse", "to_nm", "to_dense",
    "csr_stored_bytes", "nm_stored_bytes", "dense_stored_bytes",
    "CRITERIA", "weight_norm_importance", "channel_importance", "select_outputs", "structured_prune",
    "Link", "leaf_chain", "find_link", "prunable_links", "prune_outputs",
    "PruneResult", "sparsegpt", "wanda", "wanda_scores",
]
