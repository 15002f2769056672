// Where every byte of an int8 tensor-core fragment lives: the register layout of
// mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 (PTX ISA, "Matrix fragments for mma.m16n8k32"),
// the packed weight layouts the kernels stream, and the work split of the whole-MLP kernel.
//
// Everything here is index arithmetic shared by the CUDA kernels (csrc/cuda/*.cu) and the host
// emulation that tests them without a GPU (fragment_packing.h): the kernels call the same
// functions, so a host test of the emulation checks the kernels' index math. HEADRACE_HD marks
// them __host__ __device__ under nvcc and plain inline functions elsewhere.
//
// Lane terms used throughout: for lane l of a warp, group = l / 4 (0..7), thread_in_group = l % 4.
//   A (16 x 32 int8, row-major), 4 registers of 4 bytes:
//     reg 0: row group,     k = 4*thread_in_group + byte        (byte 0..3)
//     reg 1: row group + 8, k = 4*thread_in_group + byte
//     reg 2: row group,     k = 16 + 4*thread_in_group + byte
//     reg 3: row group + 8, k = 16 + 4*thread_in_group + byte
//   B (32 x 8 int8, "col": k contiguous per column), 2 registers:
//     reg 0: column group, k = 4*thread_in_group + byte
//     reg 1: column group, k = 16 + 4*thread_in_group + byte
//   C/D (16 x 8 int32), 4 registers:
//     reg r: row group + 8*(r / 2), column 2*thread_in_group + r % 2
//
// Threading: pure functions.
#pragma once

#include <cstddef>
#include <cstdint>

#if defined(__CUDACC__)
#define HEADRACE_HD __host__ __device__ __forceinline__
#else
#define HEADRACE_HD inline
#endif

namespace headrace::cuda::layout {

constexpr int kWarpLanes = 32;
constexpr int kMmaM = 16;
constexpr int kMmaN = 8;
constexpr int kMmaK = 32;

// ---- the mma.m16n8k32 s8 fragments (PTX) ----

struct RowCol {
  int row;  // A: row (m); B: k
  int col;  // A: k;       B: column (n)
};

HEADRACE_HD RowCol a_fragment_element(int lane, int reg, int byte) {
  const int group = lane >> 2;
  const int in_group = lane & 3;
  return {group + 8 * (reg & 1), 16 * (reg >> 1) + 4 * in_group + byte};
}

HEADRACE_HD RowCol b_fragment_element(int lane, int reg, int byte) {
  const int group = lane >> 2;
  const int in_group = lane & 3;
  return {16 * reg + 4 * in_group + byte, group};
}

HEADRACE_HD RowCol c_fragment_element(int lane, int reg) {
  const int group = lane >> 2;
  const int in_group = lane & 3;
  return {group + 8 * (reg >> 1), 2 * in_group + (reg & 1)};
}

// ---- whole-MLP kernel: packed weights ----
//
// Per layer, W[k][n] is padded with zeros to n_pad (a multiple of kMlpGroupColumns) columns and
// k_pad (a multiple of kMlpKStep) rows, then stored as
//   [n8 tile][k step of 64][lane][16 bytes]
// where a lane's 16 bytes are its two B registers for k 0..31 of the step, then its two for
// k 32..63. One warp-wide 16-byte load per lane fetches a whole n8 x k64 slab (512 contiguous
// bytes, fully coalesced), and the slabs of one n8 tile follow each other along k, so a warp
// streams each tile front to back.
constexpr int kMlpKStep = 64;
constexpr int kMlpSlabBytes = kWarpLanes * 16;  // one n8 x k64 slab
// A warp computes kMlpGroupTiles n8 tiles at once, so each A fragment read from shared memory
// feeds that many mma instructions.
constexpr int kMlpGroupTiles = 4;
constexpr int kMlpGroupColumns = kMlpGroupTiles * kMmaN;  // 32

HEADRACE_HD std::size_t round_up(std::size_t value, std::size_t multiple) {
  return (value + multiple - 1) / multiple * multiple;
}

HEADRACE_HD std::size_t mlp_k_pad(std::size_t k) { return round_up(k, kMlpKStep); }
HEADRACE_HD std::size_t mlp_n_pad(std::size_t n) { return round_up(n, kMlpGroupColumns); }
HEADRACE_HD std::size_t mlp_packed_bytes(std::size_t k, std::size_t n) {
  return mlp_k_pad(k) * mlp_n_pad(n);
}

// Byte offset of the 16 bytes that `lane` loads for n8 tile `tile`, k step `step`.
HEADRACE_HD std::size_t mlp_slab_offset(std::size_t tile, std::size_t step, std::size_t k_steps,
                                        int lane) {
  return ((tile * k_steps + step) * kWarpLanes + static_cast<std::size_t>(lane)) * 16;
}

// Which W[k][n] (relative to the slab's first k and first column) byte `index` (0..15) of a
// lane's slab chunk holds.
HEADRACE_HD RowCol mlp_slab_element(int lane, int index) {
  const int half = index >> 3;  // k 0..31 or 32..63 of the step
  const int reg = (index >> 2) & 1;
  const RowCol b = b_fragment_element(lane, reg, index & 3);
  return {b.row + kMmaK * half, b.col};
}

// ---- whole-MLP kernel: activations in shared memory ----
//
// Activations are int8 [rows][stride] with stride = widest k_pad + 16: the extra 16 bytes shift
// consecutive rows by 4 banks, so the 8 rows x 4 words an A fragment load touches hit 32
// different banks.
HEADRACE_HD std::size_t mlp_activation_stride(std::size_t widest_k_pad) { return widest_k_pad + 16; }

// Byte offset in the activation buffer of A register `reg` of m tile `m_tile` at k `k0`
// (a multiple of 32): 4 consecutive k's of one row.
HEADRACE_HD std::size_t mlp_a_offset(int lane, int reg, int m_tile, std::size_t k0,
                                     std::size_t stride) {
  const RowCol a = a_fragment_element(lane, reg, 0);
  return static_cast<std::size_t>(m_tile * kMmaM + a.row) * stride + k0 +
         static_cast<std::size_t>(a.col);
}

// ---- whole-MLP kernel: who computes what ----
//
// A layer's n_pad / 32 column groups are dealt out to the cluster's CTAs in contiguous runs; CTA
// `rank` owns groups [first, end). Inside a CTA the warps take work items (group, k part): when a
// CTA owns fewer groups than it has warps, k is split so every warp streams weights. Partial sums
// meet in shared memory through int32 atomic adds, which are exact and order-independent, so the
// split never changes a result.
constexpr int kMlpWarps = 8;
constexpr int kMlpThreads = kMlpWarps * kWarpLanes;
constexpr int kMlpMaxRows = 64;  // rows one cluster carries through the network
constexpr int kMlpMaxMTiles = kMlpMaxRows / kMmaM;

struct GroupRange {
  int first;
  int end;
};

HEADRACE_HD GroupRange mlp_owned_groups(int groups, int cluster_size, int rank) {
  return {groups * rank / cluster_size, groups * (rank + 1) / cluster_size};
}

// The most groups any CTA owns: sizes the CTA's int32/float buffer.
HEADRACE_HD int mlp_max_owned_groups(int groups, int cluster_size) {
  return (groups + cluster_size - 1) / cluster_size;
}

struct WorkSplit {
  int items;    // work items in this CTA
  int k_parts;  // k split of each owned group
};

HEADRACE_HD WorkSplit mlp_work_split(int owned_groups, int k_steps) {
  if (owned_groups <= 0) return {0, 1};
  int parts = kMlpWarps / owned_groups;
  if (parts < 1) parts = 1;
  if (parts > k_steps) parts = k_steps;
  return {owned_groups * parts, parts};
}

struct WorkItem {
  int group;       // relative to the CTA's first owned group
  int step_first;  // k steps [step_first, step_end)
  int step_end;
};

HEADRACE_HD WorkItem mlp_work_item(int item, int owned_groups, int k_parts, int k_steps) {
  const int part = item / owned_groups;
  return {item % owned_groups, k_steps * part / k_parts, k_steps * (part + 1) / k_parts};
}

// Owned columns' int32 accumulators (later the float outputs in place): [rows][stride] words. The
// 4-word pad spreads the rows of an accumulator fragment over the banks.
HEADRACE_HD int mlp_accumulator_stride(int max_owned_groups) {
  return max_owned_groups * kMlpGroupColumns + 4;
}

// Each warp streams its weight slabs through its own ring of kMlpStages shared-memory stages
// (cp.async), kMlpStages - 1 k steps ahead of the mma loop: enough bytes in flight to cover L2 or
// HBM latency, which a register double buffer could not. A lane reads back only the 16 bytes it
// copied itself, so no barrier is needed between copy and use (cp.async.wait_group suffices).
constexpr int kMlpStages = 4;
constexpr int kMlpStageBytes = kMlpGroupTiles * kMlpSlabBytes;  // one k step of one group

struct MlpSharedLayout {
  std::size_t activations;  // int8 [64][activation stride]
  std::size_t accumulators; // int32, then float in place: [64][accumulator stride]
  std::size_t partial;      // float [64]: this CTA's per-row partial (max |y|, or max y)
  std::size_t partial_sum;  // float [64]: softmax partial sums
  std::size_t row_scale;    // float [64]: the current layer's input scale per row
  std::size_t ring;         // per warp: kMlpStages x kMlpStageBytes
  std::size_t total;
};

HEADRACE_HD MlpSharedLayout mlp_shared_layout(std::size_t activation_stride,
                                              int accumulator_stride) {
  MlpSharedLayout layout{};
  const std::size_t rows = kMlpMaxRows;
  layout.activations = 0;
  layout.accumulators = round_up(rows * activation_stride, 16);
  layout.partial =
      layout.accumulators + round_up(rows * static_cast<std::size_t>(accumulator_stride) * 4, 16);
  layout.partial_sum = layout.partial + rows * 4;
  layout.row_scale = layout.partial_sum + rows * 4;
  layout.ring = layout.row_scale + rows * 4;
  layout.total = layout.ring + static_cast<std::size_t>(kMlpWarps) * kMlpStages * kMlpStageBytes;
  return layout;
}

// ---- tiled GEMM kernel (large shapes) ----
//
// A [m][k] and B^T [n][k] (the weights transposed: k contiguous per output column) stream through
// shared memory in tiles of kGemmTileRows rows x kGemmTileK bytes. A row of a tile is 8 chunks of
// 16 bytes; chunk c of row r is stored at chunk c ^ (r % 8), so the 8 rows that one ldmatrix
// phase reads (same logical chunk) fall in 8 different bank groups.
constexpr int kGemmTileRows = 128;  // rows of A (and of B^T) per CTA tile
constexpr int kGemmTileK = 128;     // bytes of k per stage
constexpr int kGemmStages = 3;
constexpr int kGemmThreads = 256;   // 8 warps: 2 along m x 4 along n
constexpr int kGemmWarpRows = 64;   // warp tile: 64 rows x 32 columns
constexpr int kGemmWarpCols = 32;
constexpr int kGemmTileBytes = kGemmTileRows * kGemmTileK;

HEADRACE_HD int gemm_swizzled_offset(int row, int chunk) {
  return row * kGemmTileK + ((chunk ^ (row & 7)) << 4);
}

// ldmatrix.x4: lane l supplies the address of row (l % 8) of matrix l / 8.
// A tile for m16 tile at `row0`, k32 sub-step `kk` (0..3): matrices (rows 0-7, k 0-15),
// (rows 8-15, k 0-15), (rows 0-7, k 16-31), (rows 8-15, k 16-31) = A registers 0..3.
HEADRACE_HD int gemm_a_ldmatrix_offset(int lane, int row0, int kk) {
  const int row = row0 + (lane & 7) + 8 * ((lane >> 3) & 1);
  const int chunk = 2 * kk + (lane >> 4);
  return gemm_swizzled_offset(row, chunk);
}

// B^T rows for two n8 tiles starting at `col0`, sub-step `kk`: matrices (n 0-7, k 0-15),
// (n 0-7, k 16-31), (n 8-15, k 0-15), (n 8-15, k 16-31) = B registers 0, 1 of the first tile,
// then 0, 1 of the second.
HEADRACE_HD int gemm_b_ldmatrix_offset(int lane, int col0, int kk) {
  const int row = col0 + (lane & 7) + 8 * (lane >> 4);
  const int chunk = 2 * kk + ((lane >> 3) & 1);
  return gemm_swizzled_offset(row, chunk);
}

// cp.async copy `i` (0..3) of thread `thread` in one stage of one operand: 16 bytes, chunk
// `chunk` of tile row `row`. Consecutive threads take consecutive chunks of a row.
constexpr int kGemmCopiesPerThread = kGemmTileBytes / 16 / kGemmThreads;  // 4

struct TileChunk {
  int row;
  int chunk;
};

HEADRACE_HD TileChunk gemm_copy_chunk(int thread, int i) {
  const int index = thread + i * kGemmThreads;
  return {index >> 3, index & 7};
}

// Warp w's 64 x 32 tile inside the CTA's 128 x 128: 2 warps along m, 4 along n.
HEADRACE_HD int gemm_warp_row0(int warp) { return (warp >> 2) * kGemmWarpRows; }
HEADRACE_HD int gemm_warp_col0(int warp) { return (warp & 3) * kGemmWarpCols; }

// ldmatrix (b16, no transpose): register j of lane l holds bytes 4*(l % 4) .. +3 of row l / 4 of
// matrix j.
HEADRACE_HD RowCol ldmatrix_element(int lane, int byte) {
  return {lane >> 2, 4 * (lane & 3) + byte};
}

}  // namespace headrace::cuda::layout
