"""The CUDA kernels' host side, on any machine: the tensor-core weight packings against an
independent NumPy model of the PTX fragment layout, and the CPU emulations of both kernels (which
use the kernels' own index functions) against a NumPy int32 product, bit for bit."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headrace._core import testing
from headrace.errors import InvalidArgumentError

dims = st.integers(min_value=1, max_value=300)
odd_dims = dims.filter(lambda d: d % 16 != 0)
fills = st.sampled_from(["random", "min", "max", "extremes"])


def operand(rng: np.random.Generator, shape: tuple[int, int], fill: str) -> npt.NDArray[np.int8]:
    if fill == "min":
        return np.full(shape, -128, dtype=np.int8)
    if fill == "max":
        return np.full(shape, 127, dtype=np.int8)
    if fill == "extremes":
        return rng.choice(np.array([-128, 127], dtype=np.int8), size=shape)
    return rng.integers(-128, 128, size=shape, dtype=np.int8)


def reference(a: npt.NDArray[np.int8], w: npt.NDArray[np.int8]) -> npt.NDArray[np.int32]:
    return (a.astype(np.int64) @ w.astype(np.int64)).astype(np.int32)


# The PTX ISA's fragment layout for mma.m16n8k32 with .s8 operands, written out independently of
# csrc/cuda/fragment_layout.h: for lane l, group = l // 4, t = l % 4;
#   A register r, byte j: row group + 8 * (r % 2), column 16 * (r // 2) + 4 t + j
#   B register r, byte j: row (k) 16 r + 4 t + j, column group
#   C register r: row group + 8 * (r // 2), column 2 t + r % 2
def a_position(lane: int, reg: int, byte: int) -> tuple[int, int]:
    return lane // 4 + 8 * (reg % 2), 16 * (reg // 2) + 4 * (lane % 4) + byte


def b_position(lane: int, reg: int, byte: int) -> tuple[int, int]:
    return 16 * reg + 4 * (lane % 4) + byte, lane // 4


def c_position(lane: int, reg: int) -> tuple[int, int]:
    return lane // 4 + 8 * (reg // 2), 2 * (lane % 4) + reg % 2


def registers(matrix: npt.NDArray[np.int8], count: int, position: object) -> npt.NDArray[np.uint32]:
    regs = np.zeros((32, count), dtype=np.uint32)
    for lane in range(32):
        for reg in range(count):
            word = 0
            for byte in range(4):
                row, col = position(lane, reg, byte)  # type: ignore[operator]
                word |= int(np.uint8(matrix[row, col])) << (8 * byte)
            regs[lane, reg] = word
    return regs


def test_emulated_mma_follows_the_ptx_layout() -> None:
    rng = np.random.default_rng(7)
    for fill in ("random", "min", "max", "extremes"):
        a = operand(rng, (16, 32), fill)
        b = operand(rng, (32, 8), "random")
        c = rng.integers(-(2**20), 2**20, size=(16, 8), dtype=np.int32)
        c_regs = np.array(
            [[c[c_position(lane, r)] for r in range(4)] for lane in range(32)], dtype=np.int32
        )
        d_regs = testing.cuda_emulate_mma(
            registers(a, 4, a_position), registers(b, 2, b_position), c_regs
        )
        expected = reference(a, b) + c
        for lane in range(32):
            for reg in range(4):
                assert d_regs[lane, reg] == expected[c_position(lane, reg)]


def unpack_mlp_slabs(packed: npt.NDArray[np.int8], k: int, n: int) -> npt.NDArray[np.int8]:
    """W [k, n] back out of the slabs [n8 tile][k64 step][lane][16 bytes] (PTX B layout)."""
    k_pad = -(-k // 64) * 64
    n_pad = -(-n // 32) * 32
    slabs = packed.reshape(n_pad // 8, k_pad // 64, 32, 16)
    w = np.zeros((k_pad, n_pad), dtype=np.int8)
    step_k = 64 * np.arange(k_pad // 64)[None, :]  # [1, steps]
    tile_n = 8 * np.arange(n_pad // 8)[:, None]  # [tiles, 1]
    for lane in range(32):
        for index in range(16):
            half, reg, byte = index // 8, (index // 4) % 2, index % 4
            row, col = b_position(lane, reg, byte)
            w[step_k + 32 * half + row, tile_n + col] = slabs[:, :, lane, index]
    assert not w[k:, :].any() and not w[:, n:].any(), "padding must be zero"
    return w[:k, :n]


@settings(max_examples=40, deadline=None)
@given(k=dims, n=dims, fill=fills, seed=st.integers(0, 2**32 - 1))
def test_mlp_packing_holds_every_weight_at_its_fragment_position(
    k: int, n: int, fill: str, seed: int
) -> None:
    w = operand(np.random.default_rng(seed), (k, n), fill)
    packed = testing.cuda_pack_mlp_weights(w)
    assert packed.dtype == np.int8 and packed.ndim == 1
    np.testing.assert_array_equal(unpack_mlp_slabs(packed, k, n), w)


@settings(max_examples=40, deadline=None)
@given(k=dims, n=dims, seed=st.integers(0, 2**32 - 1))
def test_gemm_packing_is_the_padded_transpose(k: int, n: int, seed: int) -> None:
    w = operand(np.random.default_rng(seed), (k, n), "random")
    bt = testing.cuda_pack_gemm_weights(w)
    assert bt.shape == (n, -(-k // 16) * 16)
    np.testing.assert_array_equal(bt[:, :k], w.T)
    assert not bt[:, k:].any()


@settings(max_examples=30, deadline=None)
@given(
    m=st.integers(1, 64),
    k=odd_dims,
    n=odd_dims,
    cluster=st.sampled_from([1, 2, 3, 4, 8, 16]),
    fill_a=fills,
    fill_w=fills,
    seed=st.integers(0, 2**32 - 1),
)
def test_whole_mlp_kernel_emulation_is_bit_exact(
    m: int, k: int, n: int, cluster: int, fill_a: str, fill_w: str, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    a = operand(rng, (m, k), fill_a)
    w = operand(rng, (k, n), fill_w)
    np.testing.assert_array_equal(testing.cuda_emulate_mlp_layer(a, w, cluster), reference(a, w))


@settings(max_examples=12, deadline=None)
@given(
    m=st.integers(1, 200),
    k=st.integers(1, 300),
    n=st.integers(1, 200),
    fill_a=fills,
    fill_w=fills,
    seed=st.integers(0, 2**32 - 1),
)
def test_tiled_gemm_kernel_emulation_is_bit_exact(
    m: int, k: int, n: int, fill_a: str, fill_w: str, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    a = operand(rng, (m, k), fill_a)
    w = operand(rng, (k, n), fill_w)
    np.testing.assert_array_equal(testing.cuda_emulate_tiled_gemm(a, w), reference(a, w))


def test_bad_operands_are_invalid_arguments() -> None:
    w = np.ones((4, 4), dtype=np.int8)
    calls = [
        lambda: testing.cuda_pack_mlp_weights(np.ones((4, 4), dtype=np.int16)),  # type: ignore[arg-type]
        lambda: testing.cuda_pack_mlp_weights(np.ones(4, dtype=np.int8)),
        lambda: testing.cuda_emulate_mlp_layer(np.ones((65, 4), dtype=np.int8), w, 1),
        lambda: testing.cuda_emulate_mlp_layer(np.ones((2, 3), dtype=np.int8), w, 1),
        lambda: testing.cuda_emulate_mlp_layer(np.ones((2, 4), dtype=np.int8), w, 0),
        lambda: testing.cuda_emulate_tiled_gemm(np.ones((2, 5), dtype=np.int8), w),
    ]
    for call in calls:
        with pytest.raises(InvalidArgumentError):
            call()
