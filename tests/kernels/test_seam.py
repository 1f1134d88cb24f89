"""The backend setting, the registry and the build facts."""

import os
import threading

import numpy as np
import pytest

import refcompress.kernels as kernels
from refcompress.errors import ArgumentError, BackendError
from refcompress.kernels import _native


def test_c_extension_built_when_required():
    # CI and the README's test command set REFCOMPRESS_REQUIRE_C=1, so a broken C build
    # fails the run instead of quietly testing only the NumPy reference.
    if os.environ.get("REFCOMPRESS_REQUIRE_C") == "1":
        assert _native.lib is not None, _native.LOAD_ERROR


def test_available_reports_build_and_ops():
    info = kernels.available()
    assert info["c_built"] == (_native.lib is not None)
    assert set(info["runnable_isas"]) <= set(info["compiled_isas"])
    assert set(info["runnable_isas"]) <= set(info["cpu_isas"])
    assert {"quantize", "dequantize"} <= set(info["ops"])
    if info["c_built"]:
        assert "portable" in info["runnable_isas"]
        assert info["ops"]["quantize"]["selected"] == kernels.variants("quantize")[-1]


def test_use_restores_previous_setting_and_nests():
    before = kernels.get_backend()
    with kernels.use("numpy"):
        assert kernels.get_backend() == "numpy"
        assert kernels.selected_variant("quantize") is None
        with kernels.use(threads=1):
            assert kernels.get_backend() == "numpy"
            assert kernels.get_num_threads() == 1
    assert kernels.get_backend() == before


def test_use_is_per_thread():
    seen = {}
    with kernels.use("numpy"):
        t = threading.Thread(target=lambda: seen.setdefault("b", kernels.get_backend()))
        t.start()
        t.join()
    assert seen["b"] == kernels.get_backend()


@pytest.mark.parametrize("bad", ["gpu", "C", ""])
def test_bad_backend_names_the_argument(bad):
    with pytest.raises(ArgumentError, match="backend"):
        with kernels.use(bad):
            pass


def test_bad_isa_and_threads():
    with pytest.raises(ArgumentError, match="isa"):
        with kernels.use("c", isa="neon"):
            pass
    with pytest.raises(ArgumentError, match="isa"):
        with kernels.use("numpy", isa="avx2"):
            pass
    with pytest.raises(ArgumentError, match="threads"):
        kernels.set_num_threads(0)


@pytest.mark.skipif(_native.lib is None, reason="C extension not built")
def test_explicit_isa_that_cannot_run_is_an_error(monkeypatch):
    # quantize has no VNNI variant: asking for it must fail loudly, not fall back.
    x = np.ones(4, np.float32)
    with kernels.use("c", isa="avx512_vnni"):
        with pytest.raises(BackendError, match="avx512_vnni"):
            kernels.quantize(x, 1.0)


def test_explicit_c_without_build_raises_and_auto_falls_back_with_one_warning(monkeypatch):
    from refcompress.kernels import _registry

    monkeypatch.setattr(_native, "lib", None)
    monkeypatch.setattr(_native, "LOAD_ERROR", "ImportError: simulated")
    monkeypatch.setattr(_registry, "_warned_fallback", False)
    x = np.array([1.0, 2.5], np.float32)
    with kernels.use("c"):
        with pytest.raises(BackendError, match="simulated"):
            kernels.quantize(x, 1.0)
    with kernels.use("auto"):
        with pytest.warns(RuntimeWarning, match="NumPy reference") as rec:
            q1 = kernels.quantize(x, 1.0)
        assert rec[0].filename == __file__  # the warning points at the user's line
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("error")
            q2 = kernels.quantize(x, 1.0)  # the second call must not warn again
    np.testing.assert_array_equal(q1, [1, 2])
    np.testing.assert_array_equal(q2, [1, 2])


@pytest.mark.parametrize("call", ["lowrank", "qgemm", "layer"])
def test_fallback_warning_points_at_the_callers_line(monkeypatch, call):
    # Ops reach the fallback warning through different depths (dispatch, resolve_kept
    # called directly, a layer's forward): each must name the caller's file, not ours.
    from refcompress.kernels import _registry
    from refcompress.lowrank import LowRankLinear

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 8)).astype(np.float32)
    v, u = rng.standard_normal((3, 8)).astype(np.float32), rng.standard_normal((5, 3)).astype(np.float32)
    qa = rng.integers(0, 256, (2, 8), dtype=np.uint8)
    pw = kernels.pack_weights(rng.integers(-127, 128, (8, 5), dtype=np.int8))
    layer = LowRankLinear(8, 5, 3, rng=rng).eval()
    monkeypatch.setattr(_native, "lib", None)
    monkeypatch.setattr(_native, "LOAD_ERROR", "ImportError: simulated")
    monkeypatch.setattr(_registry, "_warned_fallback", False)
    with kernels.use("auto"), pytest.warns(RuntimeWarning, match="NumPy reference") as rec:
        if call == "lowrank":
            kernels.lowrank_linear(x, v, u)
        elif call == "qgemm":
            kernels.qgemm(qa, pw, 3)
        else:
            layer(x)
    assert [w.filename for w in rec if "NumPy reference" in str(w.message)] == [__file__]


def test_env_setting_is_validated(monkeypatch):
    from refcompress.kernels import _registry

    monkeypatch.setenv("REFCOMPRESS_BACKEND", "fast")
    with pytest.raises(ArgumentError, match="REFCOMPRESS_BACKEND"):
        _registry._env_setting()
    monkeypatch.setenv("REFCOMPRESS_BACKEND", "numpy")
    monkeypatch.setenv("REFCOMPRESS_THREADS", "two")
    with pytest.raises(ArgumentError, match="REFCOMPRESS_THREADS"):
        _registry._env_setting()
    monkeypatch.setenv("REFCOMPRESS_THREADS", "2")
    assert _registry._env_setting() == _registry.Setting("numpy", None, 2)


def test_sanitized_build_when_expected():
    # `make sanitize` sets REFCOMPRESS_EXPECT_SANITIZED=1: prove the ASan/UBSan build ran.
    if os.environ.get("REFCOMPRESS_EXPECT_SANITIZED") == "1":
        assert kernels.available()["sanitized"]
