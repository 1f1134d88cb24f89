"""A tiny random BertModel the exporter tests share (imported by the test modules here)."""

import numpy as np

from refcompress import nn

TINY = dict(vocab_size=30, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=16, max_position_embeddings=12, type_vocab_size=2,
            layer_norm_eps=1e-12, pad_token_id=0)


def tiny_bert(seed=0, **overrides):
    """BertModel(**TINY, **overrides) with seeded random weights, in eval mode."""
    return nn.BertModel(**{**TINY, **overrides}, rng=np.random.default_rng(seed)).eval()
