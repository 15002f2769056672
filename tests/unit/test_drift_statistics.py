"""Drift statistics from counts (csrc/drift/drift_statistics.cc) against NumPy/SciPy references."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import scipy.special
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st

from headrace import _core


def _layout_with_quantile_edges(
    reference: np.ndarray, bins: int
) -> tuple[_core.BinLayout, np.ndarray]:
    edges = np.unique(np.quantile(reference, np.arange(1, bins) / bins))
    layout = _core.BinLayout()
    layout.add_numerical(edges)
    return layout, edges


def _value_counts(layout: _core.BinLayout, values: np.ndarray) -> np.ndarray:
    # Flat counts minus the missing bin (last).
    return layout.count(values.reshape(-1, 1))[:-1]


@pytest.mark.parametrize("bins", [10, 20, 50])
@pytest.mark.parametrize("shift", [0.0, 0.05, 0.2])
@pytest.mark.parametrize("m", [1_000, 10_000])
def test_binned_ks_brackets_scipy_ks_2samp(bins: int, shift: float, m: int) -> None:
    rng = np.random.default_rng(bins * 1000 + m + int(shift * 100))
    reference = rng.lognormal(size=50_000)
    current = rng.lognormal(mean=shift, size=m)
    layout, _ = _layout_with_quantile_edges(reference, bins)
    ref = _value_counts(layout, reference)
    cur = _value_counts(layout, current)
    d_lower, d_upper, p_value, n_eff = _core.binned_ks(ref, cur)
    exact = scipy.stats.ks_2samp(reference, current)
    largest_share = max((ref / ref.sum()).max(), (cur / cur.sum()).max())
    # The documented bound: d_lower <= D_exact <= d_upper <= d_lower + largest bin share.
    assert d_lower <= exact.statistic + 1e-12
    assert exact.statistic <= d_upper + 1e-12
    assert d_upper <= d_lower + largest_share + 1e-12
    assert n_eff == pytest.approx(50_000 * m / (50_000 + m), rel=1e-12)
    # Conservative: the p-value of the lower bound is never below the exact test's.
    assert p_value >= scipy.special.kolmogorov(math.sqrt(n_eff) * exact.statistic) - 1e-12
    assert p_value == pytest.approx(scipy.special.kolmogorov(math.sqrt(n_eff) * d_lower), abs=1e-9)


def test_binned_ks_decision_matches_exact_test_on_clear_cases() -> None:
    rng = np.random.default_rng(5)
    reference = rng.normal(size=20_000)
    layout, _ = _layout_with_quantile_edges(reference, 50)
    ref = _value_counts(layout, reference)
    shifted = _value_counts(layout, rng.normal(0.3, size=5_000))
    same = _value_counts(layout, rng.normal(size=5_000))
    assert _core.binned_ks(ref, shifted)[2] < 1e-10
    assert _core.binned_ks(ref, same)[2] > 0.01


@pytest.mark.parametrize("lam", [0.05, 0.3, 0.6, 1.0, 1.17, 1.18, 1.19, 1.5, 2.0, 3.0, 5.0])
def test_kolmogorov_survival_equals_scipy(lam: float) -> None:
    assert _core.testing.kolmogorov_survival(lam) == pytest.approx(
        scipy.special.kolmogorov(lam), rel=1e-9, abs=1e-15
    )


@pytest.mark.parametrize("a", [0.5, 1.0, 2.5, 10.0, 24.5, 100.0])
@pytest.mark.parametrize("x", [0.0, 0.1, 1.0, 3.0, 10.0, 30.0, 120.0])
def test_gamma_q_equals_scipy(a: float, x: float) -> None:
    assert _core.testing.gamma_q(a, x) == pytest.approx(
        scipy.special.gammaincc(a, x), rel=1e-9, abs=1e-300
    )


def _psi_reference(ref: np.ndarray, cur: np.ndarray, floor: float = 1e-4) -> float:
    r = np.maximum(ref / ref.sum(), floor)
    c = np.maximum(cur / cur.sum(), floor)
    return float(np.sum((c - r) * np.log(c / r)))


def _chi2_reference(
    ref: np.ndarray, cur: np.ndarray, min_expected: float = 5.0
) -> tuple[float, int, float]:
    """The documented merge rule, written out plainly, then scipy.stats.chisquare."""
    expected = ref * (cur.sum() / ref.sum())
    groups_obs: list[float] = []
    groups_exp: list[float] = []
    acc_o = acc_e = 0.0
    for o, e in zip(cur.astype(float), expected, strict=True):
        acc_o += o
        acc_e += e
        if acc_e >= min_expected:
            groups_obs.append(acc_o)
            groups_exp.append(acc_e)
            acc_o = acc_e = 0.0
    if acc_o > 0 or acc_e > 0:
        if groups_obs:
            groups_obs[-1] += acc_o
            groups_exp[-1] += acc_e
        else:
            groups_obs.append(acc_o)
            groups_exp.append(acc_e)
    if len(groups_obs) < 2:
        return 0.0, 0, 1.0
    result = scipy.stats.chisquare(groups_obs, groups_exp)
    return float(result.statistic), len(groups_obs) - 1, float(result.pvalue)


count_arrays = st.integers(min_value=2, max_value=60).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(0, 5_000), min_size=n, max_size=n),
        st.lists(st.integers(0, 5_000), min_size=n, max_size=n),
    )
)


@settings(max_examples=200, deadline=None)
@given(count_arrays)
def test_psi_and_chi_square_equal_numpy_scipy_references(pair: tuple[list[int], list[int]]) -> None:
    ref = np.array(pair[0], dtype=np.uint64)
    cur = np.array(pair[1], dtype=np.uint64)
    if ref.sum() == 0 or cur.sum() == 0:
        assert math.isnan(_core.population_stability_index(ref, cur))
        assert math.isnan(_core.chi_square(ref, cur)[0])
        return
    assert _core.population_stability_index(ref, cur) == pytest.approx(
        _psi_reference(ref.astype(float), cur.astype(float)), rel=1e-9, abs=1e-12
    )
    statistic, dof, p_value, merged = _core.chi_square(ref, cur)
    ref_statistic, ref_dof, ref_p = _chi2_reference(ref.astype(float), cur.astype(float))
    assert dof == ref_dof
    assert merged == dof + 1
    assert statistic == pytest.approx(ref_statistic, rel=1e-9, abs=1e-9)
    assert p_value == pytest.approx(ref_p, rel=1e-9, abs=1e-12)


def test_chi_square_on_generated_data_without_merging_equals_scipy() -> None:
    rng = np.random.default_rng(11)
    ref = np.bincount(rng.integers(0, 12, size=20_000), minlength=12).astype(np.uint64)
    cur = np.bincount(rng.integers(0, 12, size=3_000), minlength=12).astype(np.uint64)
    statistic, dof, p_value, _ = _core.chi_square(ref, cur)
    expected = ref * (cur.sum() / ref.sum())
    result = scipy.stats.chisquare(cur.astype(float), expected)
    assert dof == 11
    assert abs(statistic - result.statistic) < 1e-9
    assert abs(p_value - result.pvalue) < 1e-9


def test_chi_square_merges_sparse_tail_and_zero_expected_bins() -> None:
    # Bins 3 and 4 expect under 5 (and 0): they pool into the group before them.
    ref = np.array([400, 300, 290, 8, 0], dtype=np.uint64)
    cur = np.array([40, 30, 20, 1, 9], dtype=np.uint64)
    statistic, dof, p_value, merged = _core.chi_square(ref, cur)
    assert merged == 3 and dof == 2
    ref_statistic, _, ref_p = _chi2_reference(ref.astype(float), cur.astype(float))
    assert statistic == pytest.approx(ref_statistic, rel=1e-12)
    assert math.isfinite(p_value) and p_value == pytest.approx(ref_p, rel=1e-9)


def test_psi_floors_empty_bins() -> None:
    ref = np.array([50, 50, 0], dtype=np.uint64)
    cur = np.array([50, 0, 50], dtype=np.uint64)
    psi = _core.population_stability_index(ref, cur)
    expected = (1e-4 - 0.5) * math.log(1e-4 / 0.5) + (0.5 - 1e-4) * math.log(0.5 / 1e-4)
    assert psi == pytest.approx(expected, rel=1e-12)


def _bh_reference(p: np.ndarray, alpha: float) -> np.ndarray:
    order = np.argsort(p, kind="stable")
    m = len(p)
    below = p[order] <= alpha * np.arange(1, m + 1) / m
    k = np.nonzero(below)[0].max() + 1 if below.any() else 0
    out = np.zeros(m, dtype=bool)
    out[order[:k]] = True
    return out


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=40), st.sampled_from([0.01, 0.05, 0.1]))
def test_corrections_match_references(p_list: list[float], alpha: float) -> None:
    p = np.array(p_list)
    assert _core.reject_hypotheses(p, alpha, "bonferroni") == list(p < alpha / len(p))
    assert _core.reject_hypotheses(p, alpha, "none") == list(p < alpha)
    assert _core.reject_hypotheses(p, alpha, "bh") == list(_bh_reference(p, alpha))


def test_nan_p_values_are_not_tests() -> None:
    p = np.array([0.02, math.nan, 0.3])
    # Two tests: Bonferroni threshold 0.025, so 0.02 is rejected.
    assert _core.reject_hypotheses(p, 0.05, "bonferroni") == [True, False, False]
    with pytest.raises(_core.CoreError):
        _core.reject_hypotheses(p, 0.05, "holm")


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.floats(-1e6, 1e6), min_size=0, max_size=70, unique=True),
    st.lists(
        st.one_of(st.floats(-2e6, 2e6), st.just(math.inf), st.just(-math.inf), st.just(math.nan)),
        min_size=1,
        max_size=50,
    ),
)
def test_branch_free_bin_search_equals_searchsorted(
    edges_list: list[float], values: list[float]
) -> None:
    edges = np.sort(np.array(edges_list, dtype=np.float64))
    layout = _core.BinLayout()
    layout.add_numerical(edges)
    layout.add_categorical(7)
    x = np.array(values)
    expected = np.where(np.isnan(x), len(edges) + 1, np.searchsorted(edges, x, side="left"))
    for value, bin_index in zip(x, expected, strict=True):
        assert layout.bin_of(0, float(value)) == bin_index
        # Values that fall on an edge count on the edge's left: bins are (e_{i-1}, e_i].
    batch = np.stack([x, np.zeros_like(x)], axis=1)
    counts = layout.count(batch)
    assert np.array_equal(counts[: len(edges) + 2], np.bincount(expected, minlength=len(edges) + 2))


def test_categorical_codes_bins() -> None:
    layout = _core.BinLayout()
    layout.add_categorical(3)
    values = np.array([0, 1, 2, 3, -1, 1.5, math.nan, 2, 1e300, -math.inf])
    counts = layout.count(values.reshape(-1, 1))
    # codes 0,1,2; "other" for 3, -1, 1.5, 1e300, -inf; missing for NaN
    assert counts.tolist() == [1, 1, 2, 5, 1]
    assert [layout.bin_of(0, v) for v in (0.0, 2.0, 3.0, math.nan)] == [0, 2, 3, 4]


def test_float32_batches_bin_like_float64() -> None:
    rng = np.random.default_rng(3)
    edges = np.unique(rng.normal(size=49).astype(np.float32).astype(np.float64))
    layout = _core.BinLayout()
    layout.add_numerical(edges)
    x = rng.normal(size=(10_000, 1)).astype(np.float32)
    x[::97] = edges[5]  # exactly on an edge
    assert np.array_equal(layout.count(x), layout.count(x.astype(np.float64)))


def test_bad_edges_are_refused() -> None:
    layout = _core.BinLayout()
    with pytest.raises(_core.CoreError) as info:
        layout.add_numerical(np.array([1.0, 1.0]))
    assert info.value.code == 3
    with pytest.raises(_core.CoreError):
        layout.add_numerical(np.array([0.0, math.inf]))
    with pytest.raises(_core.CoreError):
        layout.add_categorical(-1)


@settings(max_examples=100, deadline=None)
@given(
    st.integers(0, 63),
    st.integers(1, 5),
    st.integers(0, 200),
    st.integers(0, 2**32 - 1),
)
def test_avx2_kernel_and_scalar_search_count_the_same(
    n_edges: int, n_features: int, n_rows: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    layout = _core.BinLayout()
    edge_sets = [np.unique(rng.normal(size=n_edges).round(1)) for _ in range(n_features)]
    for edges in edge_sets:
        layout.add_numerical(edges)
    layout.add_categorical(3)
    batch = rng.normal(size=(n_rows, n_features + 1)).round(1)  # many values exactly on edges
    batch[rng.random(size=batch.shape) < 0.05] = np.nan
    batch[rng.random(size=batch.shape) < 0.02] = np.inf
    batch[rng.random(size=batch.shape) < 0.02] = -np.inf
    batch[:, -1] = rng.integers(-1, 5, size=n_rows)
    simd = layout.set_simd(True)
    fast = [layout.count(batch), layout.count(batch.astype(np.float32))]
    assert not layout.set_simd(False)
    slow = [layout.count(batch), layout.count(batch.astype(np.float32))]
    assert np.array_equal(fast[0], slow[0]) and np.array_equal(fast[1], slow[1])
    # And both equal plain NumPy binning of the same values.
    for j, edges in enumerate(edge_sets):
        column = batch[:, j]
        bins = np.where(np.isnan(column), len(edges) + 1, np.searchsorted(edges, column))
        start = layout.bin_offset(j)
        expected = np.bincount(bins.astype(np.int64), minlength=len(edges) + 2)
        assert np.array_equal(fast[0][start : start + len(edges) + 2], expected)
    assert simd == layout.set_simd(True)


def test_the_avx2_kernel_is_used_where_the_cpu_has_it() -> None:
    layout = _core.BinLayout()
    layout.add_numerical(np.arange(49, dtype=np.float64))
    # Decided on every CPU, never skipped: the kernel is on exactly where the CPU has AVX2.
    cpuinfo = Path("/proc/cpuinfo")
    has_avx2 = cpuinfo.exists() and " avx2" in cpuinfo.read_text()
    assert layout.simd == has_avx2
    layout.add_numerical(np.arange(100, dtype=np.float64))  # more than 63 edges: scalar search
    assert not layout.simd
