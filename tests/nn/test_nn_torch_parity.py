"""Optional cross-check against PyTorch where it is installed (skipped otherwise): a state
dict moves between the two by name and gives the same outputs, gradients and updates."""

import numpy as np
import pytest

from refcompress import nn

torch = pytest.importorskip("torch")


def pair(bias_before_bn=True):
    b = bias_before_bn
    ours = nn.Sequential(
        nn.Conv2d(2, 4, 3, stride=2, padding=1, dilation=1, bias=b), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=2, dilation=2, groups=4, bias=False), nn.MaxPool2d(2),
        nn.AvgPool2d(3, 1, 1), nn.Flatten(), nn.Linear(16, 6, bias=b), nn.BatchNorm1d(6), nn.Linear(6, 3))
    theirs = torch.nn.Sequential(
        torch.nn.Conv2d(2, 4, 3, stride=2, padding=1, bias=b), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
        torch.nn.Conv2d(4, 4, 3, padding=2, dilation=2, groups=4, bias=False), torch.nn.MaxPool2d(2),
        torch.nn.AvgPool2d(3, 1, 1), torch.nn.Flatten(), torch.nn.Linear(16, 6, bias=b),
        torch.nn.BatchNorm1d(6), torch.nn.Linear(6, 3)).double()
    ours.to(np.float64)
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    return ours, theirs


def test_forward_backward_and_running_stats_match_pytorch():
    ours, theirs = pair()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 2, 8, 8))
    y = rng.integers(0, 3, 3)
    out = ours(x)
    value, grad = nn.cross_entropy(out, y, label_smoothing=0.1)
    dx = ours.backward(grad)
    tx = torch.from_numpy(x).requires_grad_()
    tout = theirs(tx)
    tloss = torch.nn.functional.cross_entropy(tout, torch.from_numpy(y), label_smoothing=0.1)
    tloss.backward()
    np.testing.assert_allclose(out, tout.detach().numpy(), rtol=1e-10, atol=1e-12)
    assert value == pytest.approx(tloss.item(), rel=1e-12)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-9, atol=1e-12)
    tgrads = {k: p.grad.numpy() for k, p in theirs.named_parameters()}
    for k, p in ours.named_parameters():
        np.testing.assert_allclose(p.grad, tgrads[k], rtol=1e-9, atol=1e-12, err_msg=k)
    tsd = theirs.state_dict()
    for k, v in ours.state_dict().items():
        np.testing.assert_allclose(v, tsd[k].numpy(), rtol=1e-12, atol=1e-15, err_msg=k)
    ours.eval(), theirs.eval()
    np.testing.assert_allclose(ours(x), theirs(tx).detach().numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("make", [
    lambda p: (nn.SGD(p, lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.01),
               lambda q: torch.optim.SGD(q, lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.01)),
    lambda p: (nn.SGD(p, lr=0.1, momentum=0.9, nesterov=True),
               lambda q: torch.optim.SGD(q, lr=0.1, momentum=0.9, nesterov=True)),
    lambda p: (nn.AdamW(p, lr=0.01, weight_decay=0.1), lambda q: torch.optim.AdamW(q, lr=0.01, weight_decay=0.1)),
])
def test_optimizer_updates_match_pytorch(make):
    # a bias in front of a BatchNorm has true gradient 0 and holds only rounding noise,
    # which Adam's 1/(sqrt(v) + eps) would amplify; leave those biases out here
    ours, theirs = pair(bias_before_bn=False)
    opt, make_t = make(list(ours.parameters()))
    topt = make_t(theirs.parameters())
    rng = np.random.default_rng(1)
    for _ in range(3):
        x = rng.standard_normal((4, 2, 8, 8))
        y = rng.integers(0, 3, 4)
        opt.zero_grad()
        ours.backward(nn.cross_entropy(ours(x), y)[1])
        opt.step()
        topt.zero_grad()
        torch.nn.functional.cross_entropy(theirs(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        topt.step()
    tsd = theirs.state_dict()
    for k, v in ours.state_dict().items():
        np.testing.assert_allclose(v, tsd[k].numpy(), rtol=1e-9, atol=1e-12, err_msg=k)


def test_kl_div_matches_pytorch_formulation():
    rng = np.random.default_rng(2)
    s, t = rng.standard_normal((5, 4)) * 3, rng.standard_normal((5, 4)) * 3
    T = 3.0
    value, grad = nn.kl_div(s, t, temperature=T)
    ts = torch.from_numpy(s).requires_grad_()
    tl = torch.nn.functional.kl_div(torch.log_softmax(ts / T, 1), torch.softmax(torch.from_numpy(t) / T, 1),
                                    reduction="batchmean")
    tl.backward()
    assert value == pytest.approx(tl.item(), rel=1e-12)
    np.testing.assert_allclose(grad, ts.grad.numpy(), rtol=1e-10, atol=1e-14)
