"""Property tests of the int8 GEMM dispatch paths against a NumPy int32 reference (bit-exact).

Activations are unsigned codes up to each ISA's largest exact code (127 on avx2, whose
vpmaddubsw sums pairs into int16; 255 elsewhere); weights are any int8. Shapes are odd (no
multiple of 16, so every panel and row-block edge is a partial one) or whole (columns a multiple
of the 16-column panel, rows of the 64-row block), and fills include the saturation extremes.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headrace import _core

ALL_ISAS = ["scalar", "avx2", "avx512vnni"]

odd_dims = st.integers(min_value=1, max_value=300).filter(lambda d: d % 16 != 0)
shapes = st.one_of(
    st.tuples(odd_dims, odd_dims, odd_dims),
    # Whole 64-row blocks, whole 4-deep quads and whole 16-column panels.
    st.tuples(
        st.integers(1, 3).map(lambda b: 64 * b),
        st.integers(1, 24).map(lambda q: 16 * q),
        st.integers(1, 12).map(lambda p: 16 * p),
    ),
    # Batch 1 (the multi-panel GEMV tiles), any k and n.
    st.tuples(st.just(1), st.integers(1, 600), st.integers(1, 300)),
)
fills = st.sampled_from(["random", "min", "max", "extremes"])
# Mostly small weights, a few at the extremes (as random-initialized layers quantize): on avx2
# these pack "paired" with corrections; uniform random bytes do not.
weight_fills = st.sampled_from(["random", "min", "max", "extremes", "narrow", "narrow"])


def cpu_lacks(isa: str) -> list[str]:
    missing: list[str] = _core.quant_missing_features(isa)
    return missing


def codes_for(
    rng: np.random.Generator, shape: tuple[int, int], fill: str, top: int
) -> npt.NDArray[np.uint8]:
    if fill == "min":
        return np.zeros(shape, dtype=np.uint8)
    if fill == "max":
        return np.full(shape, top, dtype=np.uint8)
    if fill == "extremes":
        return rng.choice(np.array([0, top], dtype=np.uint8), size=shape)
    return rng.integers(0, top + 1, size=shape, dtype=np.uint8)


def weights_for(
    rng: np.random.Generator, shape: tuple[int, int], fill: str
) -> npt.NDArray[np.int8]:
    if fill == "narrow":
        weights = np.clip(np.rint(rng.normal(0, 30, size=shape)), -127, 127)
        outliers = rng.random(size=shape) < 0.005
        weights[outliers] = rng.choice(np.array([-128, 127]), size=int(outliers.sum()))
        return weights.astype(np.int8)
    if fill == "min":
        return np.full(shape, -128, dtype=np.int8)
    if fill == "max":
        return np.full(shape, 127, dtype=np.int8)
    if fill == "extremes":
        return rng.choice(np.array([-128, 127], dtype=np.int8), size=shape)
    return rng.integers(-128, 128, size=shape, dtype=np.int8)


def reference(a: npt.NDArray[np.uint8], b: npt.NDArray[np.int8]) -> npt.NDArray[np.int32]:
    return (a.astype(np.int64) @ b.astype(np.int64)).astype(np.int32)


@pytest.mark.parametrize("isa", ALL_ISAS)
@settings(max_examples=80, deadline=None)
@given(shape=shapes, fill_a=fills, fill_b=weight_fills, seed=st.integers(0, 2**32 - 1))
def test_gemm_matches_numpy_bit_exact(
    isa: str, shape: tuple[int, int, int], fill_a: str, fill_b: str, seed: int
) -> None:
    if cpu_lacks(isa):
        # This CPU cannot run the kernel; test_every_kernel_this_cpu_runs_is_tested checks the
        # list of those that ran, and the quad emulation covers the packing everywhere.
        return
    m, k, n = shape
    rng = np.random.default_rng(seed)
    a = codes_for(rng, (m, k), fill_a, _core.quant_max_activation_code(isa))
    b = weights_for(rng, (k, n), fill_b)
    got = _core.quant_gemm_s32(a, b, isa)
    assert got.dtype == np.int32
    assert got.shape == (m, n)
    np.testing.assert_array_equal(got, reference(a, b))


@settings(max_examples=80, deadline=None)
@given(shape=shapes, fill_a=fills, fill_b=fills, seed=st.integers(0, 2**32 - 1))
def test_quad_panel_algorithm_emulated_matches_numpy(
    shape: tuple[int, int, int], fill_a: str, fill_b: str, seed: int
) -> None:
    """The packing and per-quad sums of the SIMD kernels, checked on any CPU at 8-bit codes."""
    m, k, n = shape
    rng = np.random.default_rng(seed)
    a = codes_for(rng, (m, k), fill_a, 255)
    b = weights_for(rng, (k, n), fill_b)
    np.testing.assert_array_equal(_core.testing.quant_gemm_quads_emulated(a, b), reference(a, b))


def test_avx2_pairs_narrow_weights_with_corrections() -> None:
    """The paired avx2 path (quads summed in int16, shrunk weights added back) is what narrow
    weights get, and it is exact, with partial panels and an odd last quad."""
    if cpu_lacks("avx2"):
        return
    rng = np.random.default_rng(21)
    for m, k, n in [(1, 1024, 200), (8, 1000, 77), (70, 333, 48)]:
        b = weights_for(rng, (k, n), "narrow")
        packing = _core.quant_packing(b, "avx2")
        assert packing["paired"] and packing["corrections"] > 0, packing
        assert packing["aligned"]
        a = codes_for(rng, (m, k), "extremes", 127)
        np.testing.assert_array_equal(_core.quant_gemm_s32(a, b, "avx2"), reference(a, b))
    # Weights that would need too many corrections are packed unpaired.
    uniform = weights_for(rng, (256, 64), "extremes")
    assert _core.quant_packing(uniform, "avx2") == {
        "paired": False,
        "corrections": 0,
        "aligned": True,
    }


def test_every_kernel_this_cpu_runs_is_tested() -> None:
    """The property test above skips nothing silently: it covers exactly the ISAs listed here."""
    supported = _core.quant_supported_isas()
    assert supported[0] == "scalar"
    for isa in ALL_ISAS:
        assert (isa in supported) == (cpu_lacks(isa) == [])


def test_largest_exact_codes() -> None:
    assert _core.quant_max_activation_code("avx2") == 127
    assert _core.quant_max_activation_code("scalar") == 255
    assert _core.quant_max_activation_code("avx512vnni") == 255


@pytest.mark.parametrize("isa", ALL_ISAS)
def test_saturating_products_at_large_k(isa: str) -> None:
    """The largest code times -128 everywhere: every int16 pair sum at its extreme."""
    if cpu_lacks(isa):
        return
    top = _core.quant_max_activation_code(isa)
    k = 4099
    a = np.full((9, k), top, dtype=np.uint8)
    b = np.full((k, 37), -128, dtype=np.int8)
    got = _core.quant_gemm_s32(a, b, isa)
    assert (got == -128 * top * k).all()
    b[:, 1] = 127
    np.testing.assert_array_equal(_core.quant_gemm_s32(a, b, isa), reference(a, b))


def test_avx2_refuses_codes_it_cannot_multiply_exactly() -> None:
    if cpu_lacks("avx2"):
        return
    a = np.full((2, 8), 128, dtype=np.uint8)
    b = np.ones((8, 3), dtype=np.int8)
    with pytest.raises(_core.CoreError) as info:
        _core.quant_gemm_s32(a, b, "avx2")
    assert info.value.code == 3  # INVALID_ARGUMENT
    assert "128" in info.value.message


@pytest.mark.parametrize("isa", ALL_ISAS)
def test_non_contiguous_inputs_are_accepted(isa: str) -> None:
    if cpu_lacks(isa):
        return
    rng = np.random.default_rng(7)
    a = rng.integers(0, 128, size=(40, 66), dtype=np.uint8)[:, ::2]
    b = rng.integers(-128, 128, size=(33, 50), dtype=np.int8).T.copy().T
    np.testing.assert_array_equal(_core.quant_gemm_s32(a, b, isa), reference(a, b))


def test_environment_variable_forces_the_isa(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEADRACE_QUANT_ISA", "scalar")
    assert _core.quant_default_isa() == "scalar"
    monkeypatch.delenv("HEADRACE_QUANT_ISA")
    assert _core.quant_default_isa() == _core.quant_supported_isas()[-1]


def test_environment_variable_with_unknown_isa_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEADRACE_QUANT_ISA", "sse9")
    with pytest.raises(_core.CoreError) as info:
        _core.quant_default_isa()
    assert info.value.code == 3  # INVALID_ARGUMENT
    assert "sse9" in info.value.message


@pytest.mark.parametrize("isa", ALL_ISAS)
def test_forcing_an_unsupported_isa_names_the_missing_features(
    isa: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = cpu_lacks(isa)
    monkeypatch.setenv("HEADRACE_QUANT_ISA", isa)
    if not missing:
        assert _core.quant_default_isa() == isa
        return
    with pytest.raises(_core.CoreError) as info:
        _core.quant_default_isa()
    assert info.value.code == 9  # FAILED_PRECONDITION
    for feature in missing:
        assert feature in info.value.message


def test_bad_operands_are_errors() -> None:
    a = np.zeros((2, 3), dtype=np.uint8)
    b = np.zeros((4, 5), dtype=np.int8)
    with pytest.raises(_core.CoreError):
        _core.quant_gemm_s32(a, b, "scalar")
    with pytest.raises(_core.CoreError):
        _core.quant_gemm_s32(a.astype(np.int8), b[:3], "scalar")
