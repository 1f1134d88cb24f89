"""load_state_dict runs the post-step hooks of the parameters it loads (a load updates a
parameter like an optimizer step), once per Parameter."""

import numpy as np

from refcompress import nn


def test_load_state_dict_runs_post_step_hooks_once_per_loaded_parameter():
    m = nn.Sequential(nn.Linear(3, 4, rng=np.random.default_rng(0)))
    sd = m.state_dict()
    sd["0.weight"] = np.full((4, 3), 2.0, np.float32)
    calls = []

    def clip(p):
        calls.append(p)
        p.data = np.minimum(p.data, 1.0)

    m[0].weight.register_post_step_hook(clip)
    m.load_state_dict(sd)
    assert len(calls) == 1 and calls[0] is m[0].weight
    np.testing.assert_array_equal(m[0].weight.data, np.ones((4, 3), np.float32))
    # not loaded (strict=False, key absent): its hooks do not run
    calls.clear()
    m.load_state_dict({"0.bias": sd["0.bias"]}, strict=False)
    assert calls == []
