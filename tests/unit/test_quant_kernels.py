"""Property tests of the int8 GEMM dispatch paths against a NumPy int32 reference (bit-exact)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headrace import _core

ALL_ISAS = ["scalar", "avx2", "avx512vnni"]

# Odd sizes: never a multiple of 16 (so never of 64 either), so every panel and row-block edge
# is exercised.
odd_dims = st.integers(min_value=1, max_value=300).filter(lambda d: d % 16 != 0)
fills = st.sampled_from(["random", "min", "max", "extremes"])


def require_isa(isa: str) -> None:
    missing = _core.quant_missing_features(isa)
    if missing:
        pytest.skip(f"{isa} cannot run on this CPU: missing {', '.join(missing)}")


def make_operand(
    rng: np.random.Generator, shape: tuple[int, int], fill: str
) -> npt.NDArray[np.int8]:
    if fill == "min":
        return np.full(shape, -128, dtype=np.int8)
    if fill == "max":
        return np.full(shape, 127, dtype=np.int8)
    if fill == "extremes":
        return rng.choice(np.array([-128, 127], dtype=np.int8), size=shape)
    return rng.integers(-128, 128, size=shape, dtype=np.int8)


def reference(a: npt.NDArray[np.int8], b: npt.NDArray[np.int8]) -> npt.NDArray[np.int32]:
    return (a.astype(np.int64) @ b.astype(np.int64)).astype(np.int32)


@pytest.mark.parametrize("isa", ALL_ISAS)
@settings(max_examples=60, deadline=None)
@given(
    m=odd_dims, k=odd_dims, n=odd_dims, fill_a=fills, fill_b=fills, seed=st.integers(0, 2**32 - 1)
)
def test_gemm_matches_numpy_bit_exact(
    isa: str, m: int, k: int, n: int, fill_a: str, fill_b: str, seed: int
) -> None:
    require_isa(isa)
    rng = np.random.default_rng(seed)
    a = make_operand(rng, (m, k), fill_a)
    b = make_operand(rng, (k, n), fill_b)
    got = _core.quant_gemm_s32(a, b, isa)
    assert got.dtype == np.int32
    assert got.shape == (m, n)
    np.testing.assert_array_equal(got, reference(a, b))


@settings(max_examples=60, deadline=None)
@given(
    m=odd_dims, k=odd_dims, n=odd_dims, fill_a=fills, fill_b=fills, seed=st.integers(0, 2**32 - 1)
)
def test_vnni_algorithm_emulated_matches_numpy(
    m: int, k: int, n: int, fill_a: str, fill_b: str, seed: int
) -> None:
    """The +128 shift and per-column compensation of the VNNI path, checked on any CPU."""
    rng = np.random.default_rng(seed)
    a = make_operand(rng, (m, k), fill_a)
    b = make_operand(rng, (k, n), fill_b)
    np.testing.assert_array_equal(_core.testing.quant_gemm_vnni_emulated(a, b), reference(a, b))


@pytest.mark.parametrize("isa", ALL_ISAS)
def test_all_extreme_products_at_large_k(isa: str) -> None:
    """-128 * -128 everywhere at a k where any int16 pairing scheme would saturate."""
    require_isa(isa)
    k = 4099
    a = np.full((3, k), -128, dtype=np.int8)
    b = np.full((k, 5), -128, dtype=np.int8)
    got = _core.quant_gemm_s32(a, b, isa)
    assert (got == 16384 * k).all()
    b[:, 1] = 127
    np.testing.assert_array_equal(_core.quant_gemm_s32(a, b, isa), reference(a, b))


@pytest.mark.parametrize("isa", ALL_ISAS)
def test_non_contiguous_inputs_are_accepted(isa: str) -> None:
    require_isa(isa)
    rng = np.random.default_rng(7)
    a = rng.integers(-128, 128, size=(40, 66), dtype=np.int8)[:, ::2]
    b = rng.integers(-128, 128, size=(33, 50), dtype=np.int8).T.copy().T
    np.testing.assert_array_equal(_core.quant_gemm_s32(a, b, isa), reference(a, b))


def test_scalar_and_avx2_are_available_on_x86_64_with_avx2() -> None:
    supported = _core.quant_supported_isas()
    assert supported[0] == "scalar"
    assert ("avx2" in supported) == (_core.quant_missing_features("avx2") == [])


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
    missing = _core.quant_missing_features(isa)
    if not missing:
        pytest.skip(f"{isa} is supported here; nothing to refuse")
    monkeypatch.setenv("HEADRACE_QUANT_ISA", isa)
    with pytest.raises(_core.CoreError) as info:
        _core.quant_default_isa()
    assert info.value.code == 9  # FAILED_PRECONDITION
    for feature in missing:
        assert feature in info.value.message


def test_shape_mismatch_is_an_error() -> None:
    a = np.zeros((2, 3), dtype=np.int8)
    b = np.zeros((4, 5), dtype=np.int8)
    with pytest.raises(_core.CoreError):
        _core.quant_gemm_s32(a, b, "scalar")
    with pytest.raises(_core.CoreError):
        _core.quant_gemm_s32(a.astype(np.int16), b, "scalar")
