#include "cuda/fragment_packing.h"

#include <cstring>
#include <memory>
#include <string>

#include "cuda/fragment_layout.h"
#include "common/status.h"

namespace headrace::cuda {
namespace {

using namespace layout;

void require_sizes(std::size_t k, std::size_t n, const char* what) {
  if (k == 0 || n == 0) {
    throw_invalid_argument(std::string(what) + ": k and n must be >= 1, got k=" +
                           std::to_string(k) + " n=" + std::to_string(n));
  }
}

std::uint32_t load_u32(const std::int8_t* bytes) {
  std::uint32_t value;
  std::memcpy(&value, bytes, sizeof value);  // little-endian: byte j is bits 8j..8j+7
  return value;
}

std::int8_t byte_of(std::uint32_t reg, int byte) {
  return static_cast<std::int8_t>(static_cast<std::uint8_t>(reg >> (8 * byte)));
}

}  // namespace

std::vector<std::int8_t> pack_mlp_weights(const std::int8_t* w_kn, std::size_t k, std::size_t n) {
  require_sizes(k, n, "pack_mlp_weights");
  const std::size_t k_steps = mlp_k_pad(k) / kMlpKStep;
  const std::size_t tiles = mlp_n_pad(n) / kMmaN;
  std::vector<std::int8_t> packed(mlp_packed_bytes(k, n), 0);
  for (std::size_t tile = 0; tile < tiles; ++tile) {
    for (std::size_t step = 0; step < k_steps; ++step) {
      for (int lane = 0; lane < kWarpLanes; ++lane) {
        const std::size_t chunk = mlp_slab_offset(tile, step, k_steps, lane);
        for (int index = 0; index < 16; ++index) {
          const RowCol at = mlp_slab_element(lane, index);
          const std::size_t kk = step * kMlpKStep + static_cast<std::size_t>(at.row);
          const std::size_t nn = tile * kMmaN + static_cast<std::size_t>(at.col);
          if (kk < k && nn < n) packed[chunk + static_cast<std::size_t>(index)] = w_kn[kk * n + nn];
        }
      }
    }
  }
  return packed;
}

std::size_t gemm_k_pad(std::size_t k) noexcept { return round_up(k, 16); }

std::vector<std::int8_t> pack_gemm_weights(const std::int8_t* w_kn, std::size_t k,
                                           std::size_t n) {
  require_sizes(k, n, "pack_gemm_weights");
  const std::size_t k_pad = gemm_k_pad(k);
  std::vector<std::int8_t> bt(n * k_pad, 0);
  for (std::size_t kk = 0; kk < k; ++kk) {
    for (std::size_t nn = 0; nn < n; ++nn) bt[nn * k_pad + kk] = w_kn[kk * n + nn];
  }
  return bt;
}

void emulate_mma_m16n8k32(const std::uint32_t (&a)[32][4], const std::uint32_t (&b)[32][2],
                          const std::int32_t (&c)[32][4], std::int32_t (&d)[32][4]) {
  std::int32_t a_matrix[kMmaM][kMmaK] = {};
  std::int32_t b_matrix[kMmaK][kMmaN] = {};
  for (int lane = 0; lane < kWarpLanes; ++lane) {
    for (int byte = 0; byte < 4; ++byte) {
      for (int reg = 0; reg < 4; ++reg) {
        const RowCol at = a_fragment_element(lane, reg, byte);
        a_matrix[at.row][at.col] = byte_of(a[lane][reg], byte);
      }
      for (int reg = 0; reg < 2; ++reg) {
        const RowCol at = b_fragment_element(lane, reg, byte);
        b_matrix[at.row][at.col] = byte_of(b[lane][reg], byte);
      }
    }
  }
  for (int lane = 0; lane < kWarpLanes; ++lane) {
    for (int reg = 0; reg < 4; ++reg) {
      const RowCol at = c_fragment_element(lane, reg);
      std::int32_t sum = c[lane][reg];
      for (int kk = 0; kk < kMmaK; ++kk) sum += a_matrix[at.row][kk] * b_matrix[kk][at.col];
      d[lane][reg] = sum;
    }
  }
}

std::vector<std::int32_t> emulate_mlp_layer(const std::int8_t* a, std::size_t rows, std::size_t k,
                                            const std::vector<std::int8_t>& packed,
                                            std::size_t n, int cluster_size) {
  require_sizes(k, n, "emulate_mlp_layer");
  if (rows == 0 || rows > static_cast<std::size_t>(kMlpMaxRows)) {
    throw_invalid_argument("emulate_mlp_layer: rows must be 1..64, got " + std::to_string(rows));
  }
  if (packed.size() != mlp_packed_bytes(k, n)) {
    throw_invalid_argument("emulate_mlp_layer: packed weights of " +
                           std::to_string(packed.size()) + " bytes, expected " +
                           std::to_string(mlp_packed_bytes(k, n)));
  }
  if (cluster_size < 1) throw_invalid_argument("emulate_mlp_layer: cluster_size must be >= 1");
  const std::size_t k_pad = mlp_k_pad(k);
  const int k_steps = static_cast<int>(k_pad / kMlpKStep);
  const int groups = static_cast<int>(mlp_n_pad(n) / kMlpGroupColumns);
  const int m_tiles = static_cast<int>((rows + kMmaM - 1) / kMmaM);
  // Shared activations as the kernel stages them; the padding is left as garbage on purpose
  // (the kernel never clears it): zero weights there must cancel whatever it holds.
  const std::size_t stride = mlp_activation_stride(k_pad);
  std::vector<std::int8_t> shared(static_cast<std::size_t>(kMlpMaxRows) * stride,
                                  static_cast<std::int8_t>(0x5a));
  for (std::size_t r = 0; r < rows; ++r) std::memcpy(&shared[r * stride], a + r * k, k);

  std::vector<std::int32_t> out(rows * n, 0);
  const int acc_stride = mlp_accumulator_stride(mlp_max_owned_groups(groups, cluster_size));
  for (int rank = 0; rank < cluster_size; ++rank) {
    const GroupRange owned = mlp_owned_groups(groups, cluster_size, rank);
    const int owned_groups = owned.end - owned.first;
    const WorkSplit split = mlp_work_split(owned_groups, k_steps);
    std::vector<std::int32_t> acc(static_cast<std::size_t>(kMlpMaxRows * acc_stride), 0);
    for (int warp = 0; warp < kMlpWarps; ++warp) {
      for (int item_index = warp; item_index < split.items; item_index += kMlpWarps) {
        const WorkItem item = mlp_work_item(item_index, owned_groups, split.k_parts, k_steps);
        std::int32_t accum[kMlpMaxMTiles][kMlpGroupTiles][32][4] = {};
        for (int step = item.step_first; step < item.step_end; ++step) {
          for (int half = 0; half < 2; ++half) {
            std::uint32_t a_regs[kMlpMaxMTiles][32][4];
            for (int mt = 0; mt < m_tiles; ++mt) {
              for (int lane = 0; lane < kWarpLanes; ++lane) {
                for (int reg = 0; reg < 4; ++reg) {
                  const std::size_t k0 = static_cast<std::size_t>(step * kMlpKStep + half * kMmaK);
                  a_regs[mt][lane][reg] = load_u32(&shared[mlp_a_offset(lane, reg, mt, k0, stride)]);
                }
              }
            }
            for (int t = 0; t < kMlpGroupTiles; ++t) {
              const std::size_t tile =
                  static_cast<std::size_t>((owned.first + item.group) * kMlpGroupTiles + t);
              std::uint32_t b_regs[32][2];
              for (int lane = 0; lane < kWarpLanes; ++lane) {
                const std::size_t chunk = mlp_slab_offset(tile, static_cast<std::size_t>(step),
                                                          static_cast<std::size_t>(k_steps), lane);
                b_regs[lane][0] = load_u32(&packed[chunk + 8 * static_cast<std::size_t>(half)]);
                b_regs[lane][1] = load_u32(&packed[chunk + 8 * static_cast<std::size_t>(half) + 4]);
              }
              for (int mt = 0; mt < m_tiles; ++mt) {
                emulate_mma_m16n8k32(a_regs[mt], b_regs, accum[mt][t], accum[mt][t]);
              }
            }
          }
        }
        // The kernel's atomicAdd of each accumulator register into the CTA's buffer.
        for (int mt = 0; mt < m_tiles; ++mt) {
          for (int t = 0; t < kMlpGroupTiles; ++t) {
            for (int lane = 0; lane < kWarpLanes; ++lane) {
              for (int reg = 0; reg < 4; ++reg) {
                const RowCol at = c_fragment_element(lane, reg);
                const int row = mt * kMmaM + at.row;
                const int col = item.group * kMlpGroupColumns + t * kMmaN + at.col;
                acc[static_cast<std::size_t>(row * acc_stride + col)] += accum[mt][t][lane][reg];
              }
            }
          }
        }
      }
    }
    for (std::size_t r = 0; r < rows; ++r) {
      for (int col = 0; col < owned_groups * kMlpGroupColumns; ++col) {
        const std::size_t nn = static_cast<std::size_t>(owned.first * kMlpGroupColumns + col);
        if (nn < n) out[r * n + nn] = acc[r * static_cast<std::size_t>(acc_stride) + static_cast<std::size_t>(col)];
      }
    }
  }
  return out;
}

std::vector<std::int32_t> emulate_tiled_gemm(const std::int8_t* a, std::size_t lda, std::size_t m,
                                             std::size_t k, const std::vector<std::int8_t>& bt,
                                             std::size_t n) {
  require_sizes(k, n, "emulate_tiled_gemm");
  const std::size_t k_pad = gemm_k_pad(k);
  if (bt.size() != n * k_pad) {
    throw_invalid_argument("emulate_tiled_gemm: packed weights of " + std::to_string(bt.size()) +
                           " bytes, expected " + std::to_string(n * k_pad));
  }
  // The kernel reads A with cp.async 16 bytes at a time: it needs k padded to 16 too, as the
  // device wrapper arranges. Emulate that copy.
  std::vector<std::int8_t> a_pad(m * k_pad, 0);
  for (std::size_t r = 0; r < m; ++r) std::memcpy(&a_pad[r * k_pad], a + r * lda, k);

  std::vector<std::int32_t> c(m * n, 0);
  const std::size_t k_tiles = (k_pad + kGemmTileK - 1) / kGemmTileK;
  std::vector<std::int8_t> a_tile(kGemmTileBytes);
  std::vector<std::int8_t> b_tile(kGemmTileBytes);
  for (std::size_t m0 = 0; m0 < m; m0 += kGemmTileRows) {
    for (std::size_t n0 = 0; n0 < n; n0 += kGemmTileRows) {
      // Per warp: 4 m16 tiles x 4 n8 tiles of accumulator fragments (value-initialized: 0).
      const auto accum = std::make_unique<std::int32_t[][4][4][32][4]>(kGemmThreads / kWarpLanes);
      for (std::size_t kt = 0; kt < k_tiles; ++kt) {
        const std::size_t k0 = kt * kGemmTileK;
        // The cp.async stage fill: out-of-range chunks are zero-filled.
        for (int thread = 0; thread < kGemmThreads; ++thread) {
          for (int i = 0; i < kGemmCopiesPerThread; ++i) {
            const TileChunk chunk = gemm_copy_chunk(thread, i);
            const std::size_t kk = k0 + static_cast<std::size_t>(chunk.chunk) * 16;
            const auto dst = static_cast<std::size_t>(gemm_swizzled_offset(chunk.row, chunk.chunk));
            const std::size_t ar = m0 + static_cast<std::size_t>(chunk.row);
            const std::size_t br = n0 + static_cast<std::size_t>(chunk.row);
            if (ar < m && kk < k_pad) {
              std::memcpy(&a_tile[dst], &a_pad[ar * k_pad + kk], 16);
            } else {
              std::memset(&a_tile[dst], 0, 16);
            }
            if (br < n && kk < k_pad) {
              std::memcpy(&b_tile[dst], &bt[br * k_pad + kk], 16);
            } else {
              std::memset(&b_tile[dst], 0, 16);
            }
          }
        }
        for (int warp = 0; warp < kGemmThreads / kWarpLanes; ++warp) {
          const int row0 = gemm_warp_row0(warp);
          const int col0 = gemm_warp_col0(warp);
          for (int kk = 0; kk < kGemmTileK / kMmaK; ++kk) {
            std::uint32_t a_regs[4][32][4];
            std::uint32_t b_regs[4][32][2];
            // ldmatrix.x4: lane l reads row l % 8 of matrix l / 8 at the address its lane
            // supplies; register j of lane l is bytes 4*(l%4).. of row l/4 of matrix j.
            for (int mt = 0; mt < 4; ++mt) {
              int address[32];
              for (int lane = 0; lane < 32; ++lane) {
                address[lane] = gemm_a_ldmatrix_offset(lane, row0 + mt * kMmaM, kk);
              }
              for (int lane = 0; lane < 32; ++lane) {
                for (int j = 0; j < 4; ++j) {
                  const RowCol at = ldmatrix_element(lane, 0);
                  a_regs[mt][lane][j] = load_u32(&a_tile[static_cast<std::size_t>(
                      address[j * 8 + at.row] + at.col)]);
                }
              }
            }
            for (int pair = 0; pair < 2; ++pair) {
              int address[32];
              for (int lane = 0; lane < 32; ++lane) {
                address[lane] = gemm_b_ldmatrix_offset(lane, col0 + pair * 16, kk);
              }
              for (int lane = 0; lane < 32; ++lane) {
                std::uint32_t regs[4];
                for (int j = 0; j < 4; ++j) {
                  const RowCol at = ldmatrix_element(lane, 0);
                  regs[j] = load_u32(&b_tile[static_cast<std::size_t>(address[j * 8 + at.row] + at.col)]);
                }
                b_regs[2 * pair][lane][0] = regs[0];
                b_regs[2 * pair][lane][1] = regs[1];
                b_regs[2 * pair + 1][lane][0] = regs[2];
                b_regs[2 * pair + 1][lane][1] = regs[3];
              }
            }
            for (int mt = 0; mt < 4; ++mt) {
              for (int nt = 0; nt < 4; ++nt) {
                auto& fragment = accum[static_cast<std::size_t>(warp)][mt][nt];
                emulate_mma_m16n8k32(a_regs[mt], b_regs[nt], fragment, fragment);
              }
            }
          }
        }
      }
      for (int warp = 0; warp < kGemmThreads / kWarpLanes; ++warp) {
        for (int mt = 0; mt < 4; ++mt) {
          for (int nt = 0; nt < 4; ++nt) {
            for (int lane = 0; lane < 32; ++lane) {
              for (int reg = 0; reg < 4; ++reg) {
                const RowCol at = c_fragment_element(lane, reg);
                const std::size_t row =
                    m0 + static_cast<std::size_t>(gemm_warp_row0(warp) + mt * kMmaM + at.row);
                const std::size_t col =
                    n0 + static_cast<std::size_t>(gemm_warp_col0(warp) + nt * kMmaN + at.col);
                if (row < m && col < n) {
                  c[row * n + col] = accum[static_cast<std::size_t>(warp)][mt][nt][lane][reg];
                }
              }
            }
          }
        }
      }
    }
  }
  return c;
}

}  // namespace headrace::cuda
