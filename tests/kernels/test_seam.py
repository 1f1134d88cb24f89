"""The backend setting, the registry and the build facts."""

import os
import threading

import numpy as np
import pytest

import refcompress.kernels as kernels
from refcompress.errors import ArgumentError, BackendError
from refcompress.kernels import _native
from refcompress.testing import kernel_variants
from _cpuinfo import cpu_flags_or_skip  # noqa: E402


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


@pytest.fixture
def restore_global_setting():
    from refcompress.kernels import _registry

    saved = _registry._global
    try:
        yield
    finally:
        _registry._global = saved


def test_use_block_follows_set_num_threads_and_set_backend(restore_global_setting):
    # a block overrides only what it is given: before, it copied the whole outer setting
    # when it started, so set_num_threads inside `with use("c")` was ignored in the block
    from refcompress.kernels import _registry

    kernels.set_num_threads(3)
    with kernels.use("numpy"):
        assert kernels.get_num_threads() == 3
        s = _registry.current()
        assert _registry.current() is s  # the same object while nothing changes (kept decisions)
        kernels.set_num_threads(1)
        assert kernels.get_num_threads() == 1 and _registry.current() is not s
        with kernels.use(threads=2):
            kernels.set_num_threads(5)
            assert kernels.get_num_threads() == 2  # the block's own threads win
            assert kernels.get_backend() == "numpy"
        assert kernels.get_num_threads() == 5
        kernels.set_backend("c")
        assert kernels.get_backend() == "numpy"  # the block's own backend wins
    assert kernels.get_backend() == "c" and kernels.get_num_threads() == 5
    with kernels.use(threads=2):
        kernels.set_backend("numpy")
        assert kernels.get_backend() == "numpy" and kernels.get_num_threads() == 2
    if _native.lib is not None:
        kernels.set_backend("c")
        with kernels.use("c"):
            kernels.set_num_threads(1)
            assert _registry.resolve("quantize")[2] == 1
            kernels.set_num_threads(2)
            assert _registry.resolve_kept("quantize")[2] == 2


def test_isa_is_refused_for_the_numpy_backend_everywhere(restore_global_setting):
    with pytest.raises(ArgumentError, match="^isa: an ISA variant applies to the 'c' backend"):
        kernels.set_backend("numpy", isa="avx2")
    with kernels.use("numpy"):
        with pytest.raises(ArgumentError, match="^isa: an ISA variant applies to the 'c' backend"):
            with kernels.use(isa="avx2"):
                pass
        with kernels.use("c", isa="portable"):  # naming the backend is fine
            assert kernels.get_backend() == "c"
    kernels.set_backend("numpy")
    with pytest.raises(ArgumentError, match="^isa: an ISA variant applies to the 'c' backend"):
        with kernels.use(isa="portable"):
            pass
    kernels.set_backend("auto", isa="portable")
    with kernels.use(threads=1):
        kernels.set_backend("numpy")  # an inherited isa is dropped once the backend is numpy
        assert kernels.get_backend() == "numpy" and kernels.selected_variant("quantize") is None


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


# ---- which variant "auto" picks ----------------------------------------------------------------

#: AUTO's order of preference, worst to best (csrc/cpu.c, rc_isa_best); not the order of the
#: codes, which stay fixed: avx_vnni was added last but ranks below the 512-bit VNNI variants.
PREFERENCE = ("portable", "avx2", "avx512", "avx_vnni", "avx512_vnni", "avx512_vbmi")


@pytest.mark.skipif(_native.lib is None, reason="needs the C extension")
def test_auto_prefers_variants_in_the_documented_order():
    assert sorted(PREFERENCE) == sorted(_native.ISA_NAMES)
    # the codes callers pass keep their meaning (the Python side sends ISA_NAMES.index(name))
    assert _native.ISA_NAMES[:5] == ("portable", "avx2", "avx512", "avx512_vnni", "avx512_vbmi")
    lib = _native.lib
    assert [getattr(lib, "RC_ISA_" + n.upper()) for n in _native.ISA_NAMES] == list(range(len(_native.ISA_NAMES)))
    assert lib.rc_isa_best(0) == -1
    for mask in range(1, 1 << len(_native.ISA_NAMES)):  # every set of runnable variants
        names = _native.mask_to_names(mask)
        assert _native.ISA_NAMES[lib.rc_isa_best(mask)] == max(names, key=PREFERENCE.index), names


@pytest.mark.skipif(_native.lib is None, reason="needs the C extension")
@pytest.mark.parametrize("cpu, qgemm, qconv2d, quantize", [
    (PREFERENCE, "avx512_vnni", "avx512_vbmi", "avx512"),  # AVX-512 VNNI + VBMI and AVX-VNNI (Zen 4/5)
    (("portable", "avx2", "avx512", "avx512_vnni"), "avx512_vnni", "avx512_vnni", "avx512"),  # Cascade Lake
    (("portable", "avx2", "avx_vnni"), "avx_vnni", "avx_vnni", "avx2"),  # Alder Lake: AVX-VNNI, no AVX-512
    (("portable", "avx2", "avx512", "avx_vnni"), "avx_vnni", "avx_vnni", "avx512"),
    (("portable", "avx2"), "avx2", "avx2", "avx2"),
    (("portable",), "portable", "portable", "portable"),
])
def test_selected_variant_on_each_cpu_class(monkeypatch, cpu, qgemm, qconv2d, quantize):
    from refcompress.kernels import _registry

    monkeypatch.setattr(_registry, "runnable_isas", lambda: list(cpu))
    with kernels.use("auto"):
        assert kernels.selected_variant("qgemm") == qgemm
        assert kernels.selected_variant("lowrank_linear_q8") == qgemm
        assert kernels.selected_variant("qconv2d") == qconv2d
        assert kernels.selected_variant("quantize") == quantize
    with kernels.use("c", isa="portable"):  # a forced variant is the one that runs
        assert kernels.selected_variant("qgemm") == "portable"
    # a CPU without AVX-VNNI: its tests are not generated, and forcing it is refused by name
    assert (("c", "avx_vnni") in kernel_variants("qgemm")) == ("avx_vnni" in cpu)
    if "avx_vnni" not in cpu:
        a = np.zeros((1, 4), np.uint8)
        pw = kernels.pack_weights(np.zeros((4, 3), np.int8))
        with kernels.use("c", isa="avx_vnni"), pytest.raises(BackendError, match="avx_vnni"):
            kernels.qgemm(a, pw)


@pytest.mark.skipif(_native.lib is None, reason="needs the C extension")
def test_auto_on_this_cpu_picks_the_widest_vnni_variant():
    here = kernels.runnable_isas()
    if "avx512_vnni" in here:
        assert kernels.selected_variant("qgemm") == "avx512_vnni"
    elif "avx_vnni" in here:
        assert kernels.selected_variant("qgemm") == "avx_vnni"
    if "avx512_vbmi" in here:
        assert kernels.selected_variant("qconv2d") == "avx512_vbmi"


def test_avx_vnni_is_offered_exactly_when_the_cpu_reports_it():
    # the avx_vnni variant's tests are parametrized away on a CPU without it: a broken probe
    # must not turn them into silent absences on one that has it (Linux: /proc/cpuinfo flags)
    flags = cpu_flags_or_skip()
    assert ("avx_vnni" in kernels.runnable_isas()) == ({"avx2", "fma", "avx_vnni"} <= flags)
