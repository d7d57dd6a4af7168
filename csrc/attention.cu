// CUDA kernels: flash-style self-attention read straight from the fused QKV projection.
// Twin of bertfast/triton/attention.py; semantics in bertfast/ops/attention.py:
//   padded form: qkv (batch, seq, 3 * hidden), optional key-padding mask (batch, seq) bytes;
//   packed form: qkv (tokens, 3 * hidden) with int32 cu_seqlens (batch + 1 offsets).
// In the last dimension qkv is [q | k | v], each (heads, head_dim); token rows may be strided.
// Padded (or out-of-range) keys are never read: their shared-memory rows are zero-filled and
// their scores are -inf, so NaN stored there cannot reach an output. A sequence with no real
// key outputs zeros. Padded query rows are computed like real ones.
//
// fp16 / bf16: tensor cores (mma.sync.m16n8k16, fp32 accumulation), four warps per block,
// each warp owning 16 query rows; 64-key tiles of K and V are copied to shared memory with
// cp.async (zero-fill for invalid rows) and read with ldmatrix. Online softmax in the base-2
// domain with log2(e) / sqrt(head_dim) folded into one scale, fp32 statistics.
// fp32: a plain FMA path (exact fp32 products), one warp per two query rows.

#include <atomic>
#include <cmath>
#include <cstring>
#include <type_traits>

#include "common.cuh"

namespace bertfast {
namespace {

struct AttentionParams {
  void* out;                  // padded: (batch, seq, hidden); packed: (tokens, hidden)
  const void* qkv;            // padded: (batch, seq, 3 * hidden); packed: (tokens, 3 * hidden)
  const unsigned char* mask;  // padded form: (batch, seq), nonzero = real token; or nullptr
  const int* cu_seqlens;      // packed form: (batch + 1,) offsets; or nullptr
  long long stride_qkv_batch;  // elements; 0 when packed
  long long stride_qkv_token;
  long long stride_out_batch;  // 0 when packed
  long long stride_out_token;
  long long stride_mask_batch;
  int seq_len;    // padded form: the padded length; unused when packed
  int num_heads;
  int hidden;     // num_heads * head_dim
  int m_blocks;   // query blocks per (sequence, head)
  float qk_scale; // log2(e) / sqrt(head_dim)
};

// The sequence a block works on: first token row and length.
__device__ __forceinline__ void sequence_of(const AttentionParams& p, int b, long long& start,
                                            int& len) {
  if (p.cu_seqlens != nullptr) {
    const int first = p.cu_seqlens[b];
    start = first;
    len = p.cu_seqlens[b + 1] - first;
  } else {
    start = 0;
    len = p.seq_len;
  }
}

__device__ __forceinline__ bool key_is_real(const unsigned char* mask, int key, int len) {
  // Short-circuit: the mask is never read past the sequence.
  return key < len && (mask == nullptr || mask[key] != 0);
}

// 2^x with the MUFU unit; 2^-inf = +0. About 2 ulp, ample for fp16/bf16 probabilities.
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// ---------------------------------------------------------------------------------------------
// PTX wrappers (sm_80+)

__device__ __forceinline__ unsigned smem_addr(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

// 16-byte global -> shared copy; when !pred nothing is read and the destination is zeroed.
__device__ __forceinline__ void cp_async_16(void* dst, const void* src, bool pred) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)),
               "l"(src), "r"(pred ? 16 : 0));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

__device__ __forceinline__ void cp_async_wait_all() {
  asm volatile("cp.async.wait_group 0;\n" ::: "memory");
}

__device__ __forceinline__ void ldmatrix_x4(unsigned (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

__device__ __forceinline__ void ldmatrix_x4_trans(unsigned (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

// D = A * B + D for one m16n8k16 tile; A row-major 16x16, B "col" 16x8, D fp32 16x8.
template <typename T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const unsigned (&a)[4], unsigned b0,
                                          unsigned b1);

template <>
__device__ __forceinline__ void mma_16816<__half>(float (&d)[4], const unsigned (&a)[4],
                                                  unsigned b0, unsigned b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <>
__device__ __forceinline__ void mma_16816<__nv_bfloat16>(float (&d)[4], const unsigned (&a)[4],
                                                         unsigned b0, unsigned b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two floats as one 32-bit register of two 16-bit values, `lo` in the low half (the element
// with the lower column index, as the mma fragments and little-endian memory want it).
template <typename T>
__device__ __forceinline__ unsigned pack2(float lo, float hi);

template <>
__device__ __forceinline__ unsigned pack2<__half>(float lo, float hi) {
  __half2 v = __floats2half2_rn(lo, hi);
  unsigned u;
  memcpy(&u, &v, sizeof(u));
  return u;
}

template <>
__device__ __forceinline__ unsigned pack2<__nv_bfloat16>(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  unsigned u;
  memcpy(&u, &v, sizeof(u));
  return u;
}

// ---------------------------------------------------------------------------------------------
// Tensor-core kernel (fp16 / bf16)
//
// Fragment layouts of mma.m16n8k16 (PTX ISA), with g = lane / 4 and t = lane % 4:
//   A (16x16): a0 = (row g, cols 2t..2t+1), a1 = (row g+8, same cols), a2 = (row g, cols
//              2t+8..2t+9), a3 = (row g+8, cols 2t+8..2t+9);
//   B (16x8):  b0 = (k 2t..2t+1, col g), b1 = (k 2t+8..2t+9, col g);
//   C (16x8):  c0, c1 = (row g, cols 2t, 2t+1), c2, c3 = (row g+8, cols 2t, 2t+1).
// S = Q K^T takes A from Q (ldmatrix of row-major Q) and B from K stored row-major [key][d]
// (ldmatrix without .trans yields exactly b0/b1). O += P V takes A from the S accumulators
// (C of key columns 16k..16k+7 and 16k+8..16k+15 are a0/a1 and a2/a3 of one k-step) and B
// from V stored row-major [key][d] through ldmatrix.trans.

template <int D>
struct MmaTile {
  static constexpr int kWarps = 4;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kBlockM = 16 * kWarps;  // query rows per block
  static constexpr int kBlockN = 64;           // keys per tile
  // Shared-memory row stride in elements: 16 bytes of padding put the 8 rows that one
  // ldmatrix phase reads into 8 distinct 16-byte bank groups.
  static constexpr int kStride = D + 8;
  static constexpr int kChunksPerRow = D / 8;  // 16-byte chunks in one row of one head
  static constexpr int kSmemBytes = (kBlockM + 2 * kBlockN) * kStride * 2;
};

// Copy rows [0, 64) of a tile (row r at src + r * stride) into shared memory; rows for
// which `real(r)` is false are zero-filled without being read.
template <int D, typename T, typename Real>
__device__ __forceinline__ void load_tile_async(T* dst, const T* src, long long stride,
                                                Real real) {
  using Tile = MmaTile<D>;
  static_assert(Tile::kBlockM == Tile::kBlockN, "one loader serves Q, K and V tiles");
  constexpr int kChunks = Tile::kBlockN * Tile::kChunksPerRow;
  static_assert(kChunks % Tile::kThreads == 0, "every thread copies the same number of chunks");
#pragma unroll
  for (int i = 0; i < kChunks / Tile::kThreads; ++i) {
    const int c = threadIdx.x + i * Tile::kThreads;
    const int r = c / Tile::kChunksPerRow;
    const int col = (c % Tile::kChunksPerRow) * 8;
    const bool ok = real(r);
    // A predicated-off copy reads nothing, but still gets an in-bounds address.
    const T* g = ok ? src + r * stride + col : src;
    cp_async_16(dst + r * Tile::kStride + col, g, ok);
  }
}

template <typename T, int D>
__global__ void __launch_bounds__(MmaTile<D>::kThreads)
    attention_mma_kernel(const AttentionParams p) {
  using Tile = MmaTile<D>;
  constexpr int kBlockM = Tile::kBlockM, kBlockN = Tile::kBlockN, kStride = Tile::kStride;
  constexpr int kNT = kBlockN / 8;  // 8-key column blocks of S
  constexpr int kDT = D / 8;        // 8-wide column blocks of O
  static_assert(D % 16 == 0 && D <= 128, "head_dim must be a multiple of 16, at most 128");

  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);
  T* sK = sQ + kBlockM * kStride;
  T* sV = sK + kBlockN * kStride;

  const int m_block = blockIdx.x % p.m_blocks;
  const int batch_head = blockIdx.x / p.m_blocks;
  const int b = batch_head / p.num_heads;
  const int h = batch_head % p.num_heads;
  long long start;
  int len;
  sequence_of(p, b, start, len);
  const int q0 = m_block * kBlockM;
  if (q0 >= len) return;  // the same for every thread of the block

  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const long long stride = p.stride_qkv_token;
  const T* q_base = static_cast<const T*>(p.qkv) + b * p.stride_qkv_batch + start * stride +
                    static_cast<long long>(h) * D;
  const T* k_base = q_base + p.hidden;
  const T* v_base = q_base + 2 * static_cast<long long>(p.hidden);
  const unsigned char* mask =
      p.mask != nullptr ? p.mask + b * p.stride_mask_batch : nullptr;

  // Which of the 64 keys of the tile starting at n0 are real, as two 32-bit lane masks;
  // every warp computes them (cheap), so every thread has them without shared memory.
  auto real_keys = [&](int n0, unsigned& lo, unsigned& hi) {
    lo = __ballot_sync(0xffffffffu, key_is_real(mask, n0 + lane, len));
    hi = __ballot_sync(0xffffffffu, key_is_real(mask, n0 + 32 + lane, len));
  };
  auto bit = [](unsigned lo, unsigned hi, int r) {
    return ((r < 32 ? lo >> r : hi >> (r - 32)) & 1u) != 0;
  };

  // Prologue: Q and the first K tile in one cp.async group.
  unsigned keys_lo, keys_hi;
  real_keys(0, keys_lo, keys_hi);
  load_tile_async<D>(sQ, q_base + q0 * stride, stride, [&](int r) { return q0 + r < len; });
  load_tile_async<D>(sK, k_base, stride, [&](int r) { return bit(keys_lo, keys_hi, r); });
  cp_async_commit();

  // Q fragments stay in registers for the whole key loop.
  cp_async_wait_all();
  __syncthreads();
  unsigned q_frag[D / 16][4];
#pragma unroll
  for (int ks = 0; ks < D / 16; ++ks) {
    const T* p_q = sQ + (warp * 16 + (lane & 15)) * kStride + ks * 16 + (lane >> 4) * 8;
    ldmatrix_x4(q_frag[ks], p_q);
  }
  float acc[kDT][4];
#pragma unroll
  for (int i = 0; i < kDT; ++i)
#pragma unroll
    for (int c = 0; c < 4; ++c) acc[i][c] = 0.0f;
  // Per thread: rows g and g + 8 of the warp's 16. row_max is shared by the 4 threads of a
  // quad; row_sum is this thread's partial sum, reduced over the quad at the end.
  float row_max[2] = {-INFINITY, -INFINITY};
  float row_sum[2] = {0.0f, 0.0f};

  const int n_tiles = (len + kBlockN - 1) / kBlockN;
  for (int j = 0; j < n_tiles; ++j) {
    const int n0 = j * kBlockN;
    // K_j has landed for every thread; every warp is done reading V_{j-1}.
    if (j > 0) {
      cp_async_wait_all();
      __syncthreads();
    }
    // V_j streams in while S = Q K_j^T is computed.
    load_tile_async<D>(sV, v_base + n0 * stride, stride,
                       [&](int r) { return bit(keys_lo, keys_hi, r); });
    cp_async_commit();

    float s[kNT][4];
#pragma unroll
    for (int i = 0; i < kNT; ++i)
#pragma unroll
      for (int c = 0; c < 4; ++c) s[i][c] = 0.0f;
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks) {
#pragma unroll
      for (int np = 0; np < kNT / 2; ++np) {
        // Keys 16np..16np+15, d 16ks..16ks+15: matrices (keys lo, d lo), (keys lo, d hi),
        // (keys hi, d lo), (keys hi, d hi) = b0, b1 of key block 2np, then of 2np + 1.
        const int row = np * 16 + (lane & 7) + ((lane >> 4) << 3);
        const int col = ks * 16 + ((lane >> 3) & 1) * 8;
        unsigned kf[4];
        ldmatrix_x4(kf, sK + row * kStride + col);
        mma_16816<T>(s[2 * np], q_frag[ks], kf[0], kf[1]);
        mma_16816<T>(s[2 * np + 1], q_frag[ks], kf[2], kf[3]);
      }
    }

    // Online softmax over this tile (base 2). Padded keys get -inf by selection, never by
    // arithmetic, so nothing stored in their rows matters.
    float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int i = 0; i < kNT; ++i)
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const int key = i * 8 + (lane & 3) * 2 + (c & 1);
        s[i][c] = bit(keys_lo, keys_hi, key) ? s[i][c] * p.qk_scale : -INFINITY;
        tile_max[c >> 1] = fmaxf(tile_max[c >> 1], s[i][c]);
      }
    float shift[2], alpha[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 1));
      tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 2));
      const float new_max = fmaxf(row_max[r], tile_max[r]);
      // A row with no real key so far keeps max -inf: shift by 0 so exp2 gives 0, not NaN.
      shift[r] = new_max == -INFINITY ? 0.0f : new_max;
      alpha[r] = fast_exp2(row_max[r] - shift[r]);
      row_max[r] = new_max;
      row_sum[r] *= alpha[r];
    }
#pragma unroll
    for (int i = 0; i < kNT; ++i)
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        s[i][c] = fast_exp2(s[i][c] - shift[c >> 1]);
        row_sum[c >> 1] += s[i][c];
      }
#pragma unroll
    for (int i = 0; i < kDT; ++i)
#pragma unroll
      for (int c = 0; c < 4; ++c) acc[i][c] *= alpha[c >> 1];

    // V_j has landed; every warp is done reading K_j, so K_{j+1} may overwrite it while
    // O += P V_j is computed.
    cp_async_wait_all();
    __syncthreads();
    unsigned next_lo = 0, next_hi = 0;
    if (j + 1 < n_tiles) {
      real_keys(n0 + kBlockN, next_lo, next_hi);
      load_tile_async<D>(sK, k_base + (n0 + kBlockN) * stride, stride,
                         [&](int r) { return bit(next_lo, next_hi, r); });
      cp_async_commit();
    }

#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk) {
      unsigned pf[4];
      pf[0] = pack2<T>(s[2 * kk][0], s[2 * kk][1]);
      pf[1] = pack2<T>(s[2 * kk][2], s[2 * kk][3]);
      pf[2] = pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]);
      pf[3] = pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
      for (int dp = 0; dp < D / 16; ++dp) {
        // Keys 16kk..16kk+15, d 16dp..16dp+15, transposed: matrices (keys lo, d lo),
        // (keys hi, d lo), (keys lo, d hi), (keys hi, d hi) = b0, b1 of d block 2dp, then
        // of 2dp + 1.
        const int row = kk * 16 + (lane & 7) + (((lane >> 3) & 1) << 3);
        const int col = dp * 16 + (lane >> 4) * 8;
        unsigned vf[4];
        ldmatrix_x4_trans(vf, sV + row * kStride + col);
        mma_16816<T>(acc[2 * dp], pf, vf[0], vf[1]);
        mma_16816<T>(acc[2 * dp + 1], pf, vf[2], vf[3]);
      }
    }
    keys_lo = next_lo;
    keys_hi = next_hi;
  }

  // Normalise; a row with no real key has sum 0 and a zero accumulator: it outputs 0.
  float inv[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float total = row_sum[r];
    total += __shfl_xor_sync(0xffffffffu, total, 1);
    total += __shfl_xor_sync(0xffffffffu, total, 2);
    inv[r] = total > 0.0f ? 1.0f / total : 0.0f;
  }
  // Stage the warp's 16 output rows in its own rows of sQ (only this warp ever read them,
  // before the loop's barriers), then write them out with 16-byte stores.
  T* s_out = sQ + warp * 16 * kStride;
#pragma unroll
  for (int i = 0; i < kDT; ++i)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int row = (lane >> 2) + 8 * r;
      const int col = i * 8 + (lane & 3) * 2;
      const unsigned packed = pack2<T>(acc[i][2 * r] * inv[r], acc[i][2 * r + 1] * inv[r]);
      *reinterpret_cast<unsigned*>(s_out + row * kStride + col) = packed;
    }
  __syncwarp();
  T* out = static_cast<T*>(p.out) + b * p.stride_out_batch + static_cast<long long>(h) * D;
#pragma unroll
  for (int c = lane; c < 16 * Tile::kChunksPerRow; c += 32) {
    const int r = c / Tile::kChunksPerRow;
    const int col = (c % Tile::kChunksPerRow) * 8;
    const int q = q0 + warp * 16 + r;
    if (q < len) {
      *reinterpret_cast<uint4*>(out + (start + q) * p.stride_out_token + col) =
          *reinterpret_cast<const uint4*>(s_out + r * kStride + col);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// fp32 kernel: exact fp32 FMAs, no tensor cores. 8 warps x 2 query rows per block; a tile of
// 32 keys in shared memory, lane j scoring key j, the probabilities broadcast by shuffles for
// the weighted sum, lane l accumulating head-dim elements l, l + 32, ...

struct F32Tile {
  static constexpr int kWarps = 8;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kRowsPerWarp = 2;
  static constexpr int kBlockM = kWarps * kRowsPerWarp;
  static constexpr int kBlockN = 32;
};

template <int D>
__global__ void __launch_bounds__(F32Tile::kThreads)
    attention_f32_kernel(const AttentionParams p) {
  constexpr int kBlockM = F32Tile::kBlockM, kBlockN = F32Tile::kBlockN;
  constexpr int kRows = F32Tile::kRowsPerWarp;
  constexpr int kPerLane = (D + 31) / 32;
  __shared__ float sQ[kBlockM][D];
  __shared__ float sK[kBlockN][D + 1];  // lane j reads row j: +1 puts rows in distinct banks
  __shared__ float sV[kBlockN][D];

  const int m_block = blockIdx.x % p.m_blocks;
  const int batch_head = blockIdx.x / p.m_blocks;
  const int b = batch_head / p.num_heads;
  const int h = batch_head % p.num_heads;
  long long start;
  int len;
  sequence_of(p, b, start, len);
  const int q0 = m_block * kBlockM;
  if (q0 >= len) return;

  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const long long stride = p.stride_qkv_token;
  const float* q_base = static_cast<const float*>(p.qkv) + b * p.stride_qkv_batch +
                        start * stride + static_cast<long long>(h) * D;
  const float* k_base = q_base + p.hidden;
  const float* v_base = q_base + 2 * static_cast<long long>(p.hidden);
  const unsigned char* mask =
      p.mask != nullptr ? p.mask + b * p.stride_mask_batch : nullptr;

  for (int i = threadIdx.x; i < kBlockM * D; i += F32Tile::kThreads) {
    const int r = i / D, d = i % D;
    sQ[r][d] = q0 + r < len ? q_base[(q0 + r) * stride + d] : 0.0f;
  }

  float acc[kRows][kPerLane];
  float row_max[kRows], row_sum[kRows];  // row_sum: this lane's partial sum
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    row_max[r] = -INFINITY;
    row_sum[r] = 0.0f;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) acc[r][i] = 0.0f;
  }

  for (int n0 = 0; n0 < len; n0 += kBlockN) {
    __syncthreads();  // the previous tile is consumed (and sQ is written, first time round)
    for (int i = threadIdx.x; i < kBlockN * D; i += F32Tile::kThreads) {
      const int r = i / D, d = i % D;
      const bool real = key_is_real(mask, n0 + r, len);
      sK[r][d] = real ? k_base[(n0 + r) * stride + d] : 0.0f;
      sV[r][d] = real ? v_base[(n0 + r) * stride + d] : 0.0f;
    }
    __syncthreads();
    const bool lane_real = key_is_real(mask, n0 + lane, len);
    const int keys = min(kBlockN, len - n0);
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const int row = warp * kRows + r;
      float score = 0.0f;
#pragma unroll 16
      for (int d = 0; d < D; ++d) score = fmaf(sQ[row][d], sK[lane][d], score);
      score = lane_real ? score * p.qk_scale : -INFINITY;
      const float new_max = fmaxf(row_max[r], warp_max(score));
      const float shift = new_max == -INFINITY ? 0.0f : new_max;
      const float alpha = exp2f(row_max[r] - shift);
      const float prob = exp2f(score - shift);
      row_max[r] = new_max;
      row_sum[r] = row_sum[r] * alpha + prob;
#pragma unroll
      for (int i = 0; i < kPerLane; ++i) acc[r][i] *= alpha;
      for (int k = 0; k < keys; ++k) {
        const float pk = __shfl_sync(0xffffffffu, prob, k);
#pragma unroll
        for (int i = 0; i < kPerLane; ++i) {
          const int d = lane + 32 * i;
          if (d < D) acc[r][i] = fmaf(pk, sV[k][d], acc[r][i]);
        }
      }
    }
  }

  float* out = static_cast<float*>(p.out) + b * p.stride_out_batch + static_cast<long long>(h) * D;
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const float total = warp_sum(row_sum[r]);
    const float inv = total > 0.0f ? 1.0f / total : 0.0f;
    const int q = q0 + warp * kRows + r;
    if (q >= len) continue;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      const int d = lane + 32 * i;
      if (d < D) out[(start + q) * p.stride_out_token + d] = acc[r][i] * inv;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Launch

template <typename T, int D>
void launch_mma(AttentionParams p, int batch, int longest, cudaStream_t stream, int device) {
  using Tile = MmaTile<D>;
  p.m_blocks = (longest + Tile::kBlockM - 1) / Tile::kBlockM;
  const long long blocks = static_cast<long long>(p.m_blocks) * batch * p.num_heads;
  if (blocks > 0x7fffffffLL) throw_invalid("attention: too many (sequence, head, block) tiles");
  constexpr int smem = Tile::kSmemBytes;
  if constexpr (smem > 48 * 1024) {
    // Above 48 KB a kernel must opt in, once per device (a benign race sets it twice).
    static std::atomic<bool> opted_in[64];
    if (device >= 64 || !opted_in[device].load(std::memory_order_relaxed)) {
      BF_CUDA_CHECK(cudaFuncSetAttribute(attention_mma_kernel<T, D>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
      if (device < 64) opted_in[device].store(true, std::memory_order_relaxed);
    }
  }
  attention_mma_kernel<T, D><<<static_cast<unsigned>(blocks), Tile::kThreads, smem, stream>>>(p);
  BF_CHECK_LAUNCH("attention_mma_kernel");
}

template <int D>
void launch_f32(AttentionParams p, int batch, int longest, cudaStream_t stream) {
  p.m_blocks = (longest + F32Tile::kBlockM - 1) / F32Tile::kBlockM;
  const long long blocks = static_cast<long long>(p.m_blocks) * batch * p.num_heads;
  if (blocks > 0x7fffffffLL) throw_invalid("attention: too many (sequence, head, block) tiles");
  attention_f32_kernel<D><<<static_cast<unsigned>(blocks), F32Tile::kThreads, 0, stream>>>(p);
  BF_CHECK_LAUNCH("attention_f32_kernel");
}

template <typename F>
void dispatch_head_dim(int head_dim, F&& f) {
  switch (head_dim) {
    case 16: f(std::integral_constant<int, 16>{}); break;
    case 32: f(std::integral_constant<int, 32>{}); break;
    case 64: f(std::integral_constant<int, 64>{}); break;
    case 128: f(std::integral_constant<int, 128>{}); break;
    default:
      throw_invalid("attention: head_dim " + std::to_string(head_dim) +
                    " is not supported; supported: 16, 32, 64, 128");
  }
}

}  // namespace

void attention(std::uintptr_t out, std::uintptr_t qkv, std::uintptr_t mask,
               std::uintptr_t cu_seqlens, long long batch, long long seq_len,
               long long max_seqlen, int num_heads, int head_dim, long long stride_qkv_batch,
               long long stride_qkv_token, long long stride_out_batch,
               long long stride_out_token, long long stride_mask_batch, int dtype, int device,
               std::uintptr_t stream, bool check_pointers) {
  const bool packed = cu_seqlens != 0;
  check_dtype_code(dtype);
  dispatch_head_dim(head_dim, [](auto) {});  // rejects an unsupported head_dim
  if (packed && mask != 0) {
    throw_invalid("attention: pass either a key-padding mask (padded form) or cu_seqlens "
                  "(packed form), not both");
  }
  if (num_heads <= 0 || batch < 0 || seq_len < 0 || max_seqlen < 0) {
    throw_invalid("attention: bad shape (num_heads=" + std::to_string(num_heads) +
                  ", batch=" + std::to_string(batch) + ", seq_len=" + std::to_string(seq_len) +
                  ", max_seqlen=" + std::to_string(max_seqlen) + ")");
  }
  const long long longest = packed ? max_seqlen : seq_len;
  if (batch == 0 || longest == 0) return;  // the caller zero-fills
  if (batch > 0x7fffffffLL || longest > 0x7fffffffLL) {
    throw_invalid("attention: batch and sequence length must fit in 32 bits");
  }
  const long long hidden = static_cast<long long>(num_heads) * head_dim;
  if (hidden > 0x3fffffffLL) throw_invalid("attention: hidden size too large");
  set_device(device);
  if (check_pointers) {
    check_device_pointer("out", out, device);
    check_device_pointer("qkv", qkv, device);
    if (packed) check_device_pointer("cu_seqlens", cu_seqlens, device);
    if (mask != 0) check_device_pointer("key_padding_mask", mask, device);
  }

  AttentionParams p{};
  p.out = reinterpret_cast<void*>(out);
  p.qkv = reinterpret_cast<const void*>(qkv);
  p.mask = reinterpret_cast<const unsigned char*>(mask);
  p.cu_seqlens = reinterpret_cast<const int*>(cu_seqlens);
  p.stride_qkv_batch = packed ? 0 : stride_qkv_batch;
  p.stride_qkv_token = stride_qkv_token;
  p.stride_out_batch = packed ? 0 : stride_out_batch;
  p.stride_out_token = stride_out_token;
  p.stride_mask_batch = stride_mask_batch;
  p.seq_len = packed ? 0 : static_cast<int>(seq_len);
  p.num_heads = num_heads;
  p.hidden = static_cast<int>(hidden);
  p.qk_scale = static_cast<float>(1.4426950408889634 / std::sqrt(static_cast<double>(head_dim)));
  auto s = reinterpret_cast<cudaStream_t>(stream);

  dispatch_float(dtype, [&](auto tag) {
    using T = decltype(tag);
    dispatch_head_dim(head_dim, [&](auto d_tag) {
      constexpr int D = decltype(d_tag)::value;
      if constexpr (std::is_same_v<T, float>) {
        launch_f32<D>(p, static_cast<int>(batch), static_cast<int>(longest), s);
      } else {
        // cp.async and the 16-byte output stores need 16-byte aligned rows.
        const bool aligned = aligned16(qkv) && aligned16(out) && stride_qkv_token % 8 == 0 &&
                             p.stride_qkv_batch % 8 == 0 && stride_out_token % 8 == 0 &&
                             p.stride_out_batch % 8 == 0;
        if (!aligned) {
          throw_invalid("attention: fp16/bf16 qkv and out need 16-byte aligned data and row "
                        "strides that are multiples of 8 elements (copy qkv with .contiguous())");
        }
        launch_mma<T, D>(p, static_cast<int>(batch), static_cast<int>(longest), s, device);
      }
    });
  });
}

}  // namespace bertfast
