"""Module machinery: registration, traversal, state dicts, hooks, modes, dtype, specs."""

import json
from collections import OrderedDict

import numpy as np
import pytest

from refcompress import nn
from refcompress.errors import ArgumentError, DTypeError, RefcompressError, ShapeError


def small_net(rng=None):
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, rng=rng), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False, rng=rng), nn.GlobalAvgPool2d(),
        nn.Dropout(0.25), nn.Linear(4, 8, rng=rng), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3, rng=rng))


def test_state_dict_names_are_pytorch_dotted_names():
    sd = small_net().state_dict()
    assert isinstance(sd, OrderedDict)
    assert list(sd) == [
        "0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var",
        "1.num_batches_tracked", "4.weight", "7.weight", "7.bias", "8.weight", "8.bias",
        "8.running_mean", "8.running_var", "8.num_batches_tracked", "10.weight", "10.bias"]
    assert sd["0.weight"].shape == (4, 1, 3, 3) and sd["0.weight"].dtype == np.float32
    assert sd["4.weight"].shape == (4, 1, 3, 3) and sd["7.weight"].shape == (8, 4)
    assert sd["1.num_batches_tracked"].dtype == np.int64


def test_state_dict_holds_copies():
    net = small_net()
    sd = net.state_dict()
    sd["0.weight"][...] = 0
    assert np.any(net[0].weight.data != 0)


def test_traversal():
    net = small_net()
    names = [n for n, _ in net.named_modules()]
    assert names[:3] == ["", "0", "1"] and len(names) == 12
    assert [n for n, _ in net.named_children()] == [str(i) for i in range(11)]
    assert len(list(net.children())) == 11
    params = dict(net.named_parameters())
    assert "1.weight" in params and "1.running_mean" not in params
    assert sum(p.size for p in net.parameters()) == 4 * 9 + 4 + 8 + 36 + 32 + 8 + 16 + 24 + 3
    assert [n for n, _ in net.named_buffers()][:3] == ["1.running_mean", "1.running_var", "1.num_batches_tracked"]
    assert net.get_submodule("7") is net[7] and net.get_submodule("") is net


def test_shared_parameter_is_listed_once():
    a = nn.Linear(3, 3)
    b = nn.Linear(3, 3)
    b.weight = a.weight
    net = nn.Sequential(a, b)
    assert len(list(net.parameters())) == 3


def test_load_state_dict_round_trip_and_errors():
    src, dst = small_net(np.random.default_rng(1)), small_net(np.random.default_rng(2))
    res = dst.load_state_dict(src.state_dict())
    assert res.missing_keys == [] and res.unexpected_keys == []
    for k, v in src.state_dict().items():
        np.testing.assert_array_equal(dst.state_dict()[k], v)

    sd = src.state_dict()
    del sd["1.running_var"]
    sd["extra.weight"] = np.zeros(2, np.float32)
    with pytest.raises(ArgumentError, match=r"missing keys \['1.running_var'\].*unexpected keys \['extra.weight'\]"):
        dst.load_state_dict(sd)
    res = dst.load_state_dict(sd, strict=False)
    assert res.missing_keys == ["1.running_var"] and res.unexpected_keys == ["extra.weight"]

    sd = src.state_dict()
    sd["7.weight"] = np.zeros((8, 5), np.float32)
    with pytest.raises(ShapeError, match=r"state_dict\['7.weight'\]: expected shape \(8, 4\), got \(8, 5\)"):
        dst.load_state_dict(sd)
    sd = src.state_dict()
    sd["0.bias"] = sd["0.bias"].astype(np.float64)
    with pytest.raises(DTypeError, match=r"state_dict\['0.bias'\]: expected dtype float32, got float64"):
        dst.load_state_dict(sd)


def test_failed_load_writes_nothing():
    src, dst = small_net(np.random.default_rng(1)), small_net(np.random.default_rng(2))
    before = dst.state_dict()
    sd = src.state_dict()
    sd["10.bias"] = np.zeros(7, np.float32)  # the last key is bad; earlier keys must not land
    with pytest.raises(ShapeError):
        dst.load_state_dict(sd)
    for k, v in before.items():
        np.testing.assert_array_equal(dst.state_dict()[k], v)


def test_forward_hooks_see_inputs_and_output_replace_it_and_remove():
    lin = nn.Linear(2, 2)
    seen = []
    h1 = lin.register_forward_hook(lambda m, inp, out: seen.append((m, inp[0].shape, out.copy())))
    h2 = lin.register_forward_hook(lambda m, inp, out: out * 0 + 7)
    x = np.ones((3, 2), np.float32)
    y = lin(x)
    assert seen[0][0] is lin and seen[0][1] == (3, 2)
    np.testing.assert_array_equal(seen[0][2], lin.forward(x))
    np.testing.assert_array_equal(y, np.full((3, 2), 7, np.float32))
    h2.remove()
    h1.remove()
    h1.remove()  # removing twice is harmless
    np.testing.assert_array_equal(lin(x), lin.forward(x))
    assert len(seen) == 1


def test_hooks_on_children_capture_features():
    net = small_net()
    feats = {}
    net[5].register_forward_hook(lambda m, i, o: feats.__setitem__("gap", o))
    net(np.zeros((2, 1, 8, 8), np.float32))
    assert feats["gap"].shape == (2, 4)


def test_train_eval_zero_grad_and_backward_needs_training_cache():
    net = small_net()
    x = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)
    out = net(x)
    net.backward(np.ones_like(out))
    assert all(p.grad is not None for p in net.parameters())
    g0 = net[0].weight.grad.copy()
    net(x)
    net.backward(np.ones_like(out))  # accumulates
    assert not np.allclose(net[0].weight.grad, g0)
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())
    net.eval()
    assert not any(m.training for m in net.modules())
    net(x)
    with pytest.raises(RefcompressError, match="training mode"):
        net.backward(np.ones_like(out))
    assert net.train() is net and all(m.training for m in net.modules())


def test_eval_uses_running_stats_and_dropout_is_identity():
    net = small_net()
    x = np.random.default_rng(0).standard_normal((4, 1, 8, 8)).astype(np.float32)
    net.eval()
    before = net.state_dict()
    y1, y2 = net(x), net(x)
    np.testing.assert_array_equal(y1, y2)
    for k, v in before.items():  # eval changes no buffer
        np.testing.assert_array_equal(net.state_dict()[k], v)


def test_to_casts_float_state_only():
    net = small_net().to(np.float64)
    sd = net.state_dict()
    assert sd["0.weight"].dtype == np.float64 and sd["1.running_var"].dtype == np.float64
    assert sd["1.num_batches_tracked"].dtype == np.int64
    assert net(np.zeros((2, 1, 4, 4))).dtype == np.float64
    with pytest.raises(DTypeError, match="dtype: expected a floating dtype, got int32"):
        net.to(np.int32)


def test_inputs_of_another_dtype_are_refused_not_cast():
    with pytest.raises(DTypeError, match="x: expected dtype float32, got float64"):
        nn.Linear(2, 2)(np.zeros((1, 2)))


def test_manual_seed_makes_init_reproducible_and_rng_overrides_it():
    nn.manual_seed(5)
    a = nn.Conv2d(2, 3, 3).weight.data
    nn.manual_seed(5)
    b = nn.Conv2d(2, 3, 3).weight.data
    np.testing.assert_array_equal(a, b)
    c = nn.Conv2d(2, 3, 3, rng=np.random.default_rng(5)).weight.data
    d = nn.Conv2d(2, 3, 3, rng=np.random.default_rng(5)).weight.data
    np.testing.assert_array_equal(c, d)
    with pytest.raises(DTypeError, match="rng"):
        nn.Linear(2, 2, rng=5)


def test_default_init_is_pytorch_kaiming_uniform_bounds():
    conv = nn.Conv2d(8, 16, 3, groups=2, rng=np.random.default_rng(0))
    bound = 1 / np.sqrt(4 * 9)  # fan_in = in/groups * kh * kw
    w, b = conv.weight.data, conv.bias.data
    assert w.dtype == np.float32 and np.abs(w).max() <= bound and np.abs(w).max() > 0.9 * bound
    assert np.abs(b).max() <= bound
    lin = nn.Linear(100, 50, rng=np.random.default_rng(0))
    assert np.abs(lin.weight.data).max() <= 0.1 and np.abs(lin.weight.data).max() > 0.09


def test_sequential_indexing():
    net = small_net()
    assert len(net) == 11 and isinstance(net[-1], nn.Linear) and net[-1] is net[10]
    head = net[7:]
    assert isinstance(head, nn.Sequential) and len(head) == 4 and head[0] is net[7]
    keys = list(net.state_dict())
    new = nn.Linear(4, 8)
    net[7] = new
    assert net[7] is new and list(net.state_dict()) == keys  # replaced in place, same names
    net.append(nn.ReLU())
    assert len(net) == 12 and [n for n, _ in net.named_children()][-1] == "11"
    with pytest.raises(ArgumentError, match="idx"):
        net[12]
    with pytest.raises(DTypeError, match="module"):
        net.append(lambda x: x)


def test_set_submodule_replaces_in_place():
    net = nn.Sequential(nn.Sequential(nn.Linear(2, 3), nn.ReLU()), nn.Linear(3, 1))
    lin = nn.Linear(2, 3)
    net.set_submodule("0.0", lin)
    assert net[0][0] is lin
    with pytest.raises(ArgumentError, match="target"):
        net.set_submodule("0.5", lin)


# -- specs ---------------------------------------------------------------------------------
def test_spec_round_trip_through_json_gives_identical_outputs():
    net = small_net(np.random.default_rng(3))
    x = np.random.default_rng(0).standard_normal((5, 1, 8, 8)).astype(np.float32)
    net(x)  # move the running statistics away from their initial values
    spec = nn.to_spec(net)
    assert spec["type"] == "Sequential" and spec["children"]["0"]["type"] == "Conv2d"
    assert spec["children"]["0"]["config"]["kernel_size"] == [3, 3]
    text = json.dumps(spec, sort_keys=True)  # sorting puts "10" before "2"
    clone = nn.from_spec(json.loads(text))
    clone.load_state_dict(net.state_dict())
    net.eval(), clone.eval()
    np.testing.assert_array_equal(clone(x), net(x))
    assert nn.to_spec(clone) == spec


@nn.register_module
class Residual(nn.Module):
    """A composite test layer: y = x + body(x), whose constructor builds its child."""

    def __init__(self, width):
        super().__init__()
        self.width = width
        self.body = nn.Linear(width, width)

    def forward(self, x):
        return x + self.body(x)

    def backward(self, g):
        return g + self.body.backward(g)

    def get_config(self):
        return {"width": self.width}


def test_registered_custom_layer_round_trips_with_replaced_child():
    block = Residual(3)
    block.body = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 3))  # e.g. a low-rank factorisation
    net = nn.Sequential(block, nn.ReLU())
    clone = nn.from_spec(json.loads(json.dumps(nn.to_spec(net))))
    assert isinstance(clone[0].body, nn.Sequential)
    clone.load_state_dict(net.state_dict())
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    np.testing.assert_array_equal(clone(x), net(x))
    assert "Residual" in nn.registered_modules()


def test_spec_errors():
    class Unregistered(nn.Module):
        pass

    with pytest.raises(ArgumentError, match="0 is a Unregistered, which is not registered"):
        nn.to_spec(nn.Sequential(Unregistered()))
    with pytest.raises(ArgumentError, match="unknown module type 'Nope'"):
        nn.from_spec({"type": "Nope", "config": {}, "children": {}})
    with pytest.raises(ArgumentError, match="already registered"):
        nn.register_module(type("Linear", (nn.Module,), {}))
    with pytest.raises(ArgumentError, match="0..n-1"):
        nn.from_spec({"type": "Sequential", "config": {}, "children": {
            "1": nn.to_spec(nn.ReLU())}})


def test_a_shared_module_is_listed_under_every_path_as_pytorch(tmp_path):
    from refcompress import io
    from refcompress.errors import ArgumentError
    lin = nn.Linear(3, 3, rng=np.random.default_rng(0))
    m = nn.Sequential(lin, nn.ReLU(), lin)
    sd = m.state_dict()
    # torch.nn.Sequential(l, ReLU(), l).state_dict() keys
    assert list(sd) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    np.testing.assert_array_equal(sd["0.weight"], sd["2.weight"])
    assert len(list(m.parameters())) == 2
    # a PyTorch state dict of the same model loads; so does one listing the module once
    new = {k: v + 1 for k, v in sd.items()}
    assert m.load_state_dict(new) == ([], [])
    np.testing.assert_array_equal(lin.weight.data, sd["0.weight"] + 1)
    m.load_state_dict({"0.weight": sd["0.weight"], "0.bias": sd["0.bias"]})
    np.testing.assert_array_equal(lin.weight.data, sd["0.weight"])
    # one path edited (the other still holds the current value): the edit is loaded
    edited = m.state_dict()
    edited["0.weight"] = np.zeros_like(edited["0.weight"])
    m.load_state_dict(edited)
    np.testing.assert_array_equal(lin.weight.data, 0)
    m.load_state_dict(sd)
    # two paths with two different new values: refused, nothing written
    bad = dict(new, **{"2.weight": sd["2.weight"] + 2})
    with pytest.raises(ArgumentError, match="'0.weight', '2.weight' name the same array .* different new values"):
        m.load_state_dict(bad)
    np.testing.assert_array_equal(lin.weight.data, sd["0.weight"])   # nothing written
    # refcompress.io round trip
    x = np.random.default_rng(1).standard_normal((2, 3)).astype(np.float32)
    path = io.save(m, tmp_path / "shared.npz")
    back = io.load(path)
    np.testing.assert_array_equal(back(x), m(x))
    assert list(back.state_dict()) == list(sd)
