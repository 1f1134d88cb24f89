"""LSQ forward / backward against the paper's equations."""

import numpy as np

from refcompress import quant as Q


def test_forward_is_clipped_rounding_times_step():
    v = np.array([-3.0, -0.26, 0.24, 0.26, 0.75, 5.0], np.float32)
    v_hat, r = Q.lsq_forward(v, 0.5, -4, 3)
    np.testing.assert_array_equal(v_hat, [-2.0, -0.5, 0.0, 0.5, 1.0, 1.5])  # 1.5 -> 2: half to even
    np.testing.assert_allclose(r, v / 0.5)


def test_backward_matches_equation_3():
    v = np.array([-3.0, -0.3, 0.2, 0.7, 5.0])
    s, qn, qp = 0.5, -4, 3
    _, r = Q.lsq_forward(v, s, qn, qp)
    g_out = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    gv, gs = Q.lsq_backward(g_out, r, qn, qp)
    np.testing.assert_array_equal(gv, [0, 2, 3, 4, 0])  # STE: zero where clipped
    per = np.array([qn, np.rint(-0.6) + 0.6, np.rint(0.4) - 0.4, np.rint(1.4) - 1.4, qp])
    np.testing.assert_allclose(gs, np.sum(g_out * per) / np.sqrt(5 * qp))


def test_step_follows_the_gradient_to_a_lower_error():
    rng = np.random.default_rng(0)
    v = rng.standard_normal(4000)
    s = Q.lsq_init_step(v, 7)
    assert np.isclose(s, 2 * np.mean(np.abs(v)) / np.sqrt(7))
    err0 = np.mean((Q.lsq_forward(v, s, -8, 7)[0] - v) ** 2)
    for _ in range(200):
        v_hat, r = Q.lsq_forward(v, s, -8, 7)
        _, gs = Q.lsq_backward(2 * (v_hat - v) / v.size, r, -8, 7)
        s -= 0.5 * gs
    assert np.mean((Q.lsq_forward(v, s, -8, 7)[0] - v) ** 2) < err0


def test_fake_quantize_uses_the_step_magnitude_for_scale_and_zero_point():
    # the scale was |step| but the zero point came from the signed step: negating the
    # step flipped the zero point (64 -> 0) and moved the whole grid
    from refcompress.quant.qat import FakeQuantize, QATLinear

    x = np.linspace(-1, 3, 101).astype(np.float32)
    fq = FakeQuantize(8, lsq=True).train()
    y_pos = fq(x)
    fq.backward(np.ones_like(x))
    qp_pos, g_pos = fq.qparams(), fq.step.grad.copy()
    assert int(qp_pos.zero_point) == 64
    fq.step.data = -fq.step.data
    fq.step.grad = None
    y_neg = fq(x)
    fq.backward(np.ones_like(x))
    qp_neg = fq.qparams()
    assert qp_neg.scale == qp_pos.scale and qp_neg.zero_point == qp_pos.zero_point
    np.testing.assert_array_equal(y_neg, y_pos)
    np.testing.assert_array_equal(fq.step.grad, -g_pos)  # d|step| / d step = -1
    # the weights' per-channel steps follow the same rule
    lin = QATLinear(6, 3, weight_bits=4, lsq=True).train()
    xs = np.random.default_rng(0).standard_normal((5, 6)).astype(np.float32)
    lin.backward(np.ones_like(lin(xs)))
    g_w = lin.weight_step.grad.copy()
    lin.weight_step.data = -lin.weight_step.data
    lin.weight_step.grad, lin.weight.grad = None, None
    lin.backward(np.ones_like(lin(xs)))
    np.testing.assert_allclose(lin.weight_step.grad, -g_w, rtol=1e-6)
