// CUDA kernel: word + position + segment embedding gather, sum and LayerNorm in one pass.
// Twin of bertfast/triton/embedding_layer_norm.py; semantics in bertfast/ops/embedding_layer_norm.py.
//
// One block per token. The three table rows are read with 16-byte loads when every pointer is
// 16-byte aligned and hidden is a multiple of the vector width, element by element otherwise;
// the summed row stays in registers for the LayerNorm (fp32 statistics).

#include <type_traits>

#include "common.cuh"

namespace bertfast {
namespace {

template <typename T, typename Id, int VEC, int NV>
__global__ void embedding_layer_norm_kernel(
    T* __restrict__ out,                    // (tokens, hidden) contiguous
    const Id* __restrict__ input_ids,       // (tokens,)
    const Id* __restrict__ token_type_ids,  // (tokens,)
    const Id* __restrict__ position_ids,    // (tokens,)
    const T* __restrict__ word,             // (vocab, hidden) contiguous
    const T* __restrict__ position,         // (max_positions, hidden) contiguous
    const T* __restrict__ token_type,       // (type_vocab, hidden) contiguous
    const T* __restrict__ weight,           // (hidden,)
    const T* __restrict__ bias,             // (hidden,)
    int hidden, float eps) {
  __shared__ float scratch[32];
  const long long token = blockIdx.x;
  // Ids are trusted to be in range (the model validates them once, before any kernel).
  const long long word_row = static_cast<long long>(input_ids[token]);
  const long long type_row = static_cast<long long>(token_type_ids[token]);
  const long long position_row = static_cast<long long>(position_ids[token]);
  const T* word_ptr = word + word_row * hidden;
  const T* position_ptr = position + position_row * hidden;
  const T* type_ptr = token_type + type_row * hidden;

  const int nvec = hidden / VEC;
  float v[NV][VEC];
  bool valid[NV];
#pragma unroll
  for (int i = 0; i < NV; ++i) {
    const int vec = threadIdx.x + i * blockDim.x;
    valid[i] = vec < nvec;
#pragma unroll
    for (int j = 0; j < VEC; ++j) v[i][j] = 0.0f;
    if (valid[i]) {
      float a[VEC], b[VEC], c[VEC];
      load_vec<T, VEC>(word_ptr + vec * VEC, a);
      load_vec<T, VEC>(position_ptr + vec * VEC, b);
      load_vec<T, VEC>(type_ptr + vec * VEC, c);
#pragma unroll
      for (int j = 0; j < VEC; ++j) v[i][j] = a[j] + b[j] + c[j];
    }
  }
  layer_norm_store<T, VEC, NV>(v, valid, weight, bias, out + token * hidden, hidden, eps,
                               scratch);
}

template <typename T, typename Id, int VEC>
void launch_vec(const RowLaunch& cfg, long long tokens, cudaStream_t stream, T* out,
                const Id* ids, const Id* types, const Id* positions, const T* word,
                const T* position, const T* token_type, const T* weight, const T* bias,
                int hidden, float eps) {
  const dim3 grid(static_cast<unsigned>(tokens));
#define BF_LAUNCH(NV)                                                                      \
  embedding_layer_norm_kernel<T, Id, VEC, NV><<<grid, cfg.threads, 0, stream>>>(           \
      out, ids, types, positions, word, position, token_type, weight, bias, hidden, eps)
  switch (cfg.nv) {
    case 1: BF_LAUNCH(1); break;
    case 2: BF_LAUNCH(2); break;
    case 4: BF_LAUNCH(4); break;
    default: BF_LAUNCH(8); break;
  }
#undef BF_LAUNCH
  BF_CHECK_LAUNCH("embedding_layer_norm_kernel");
}

}  // namespace

void embedding_layer_norm(std::uintptr_t out, std::uintptr_t input_ids,
                          std::uintptr_t token_type_ids, std::uintptr_t position_ids,
                          std::uintptr_t word, std::uintptr_t position, std::uintptr_t token_type,
                          std::uintptr_t weight, std::uintptr_t bias, long long tokens,
                          long long hidden, bool ids_int64, int dtype, double eps, int device,
                          std::uintptr_t stream, bool check_pointers) {
  if (tokens < 0 || hidden <= 0) {
    throw_invalid("embedding_layer_norm: tokens must be >= 0 and hidden > 0, got tokens=" +
                  std::to_string(tokens) + " hidden=" + std::to_string(hidden));
  }
  if (tokens > 0x7fffffffLL) throw_invalid("embedding_layer_norm: more than 2^31-1 tokens");
  check_dtype_code(dtype);
  if (tokens == 0) return;
  set_device(device);
  if (check_pointers) {
    check_device_pointer("out", out, device);
    check_device_pointer("word_embeddings", word, device);
    check_device_pointer("input_ids", input_ids, device);
  }
  auto s = reinterpret_cast<cudaStream_t>(stream);
  dispatch_float(dtype, [&](auto tag) {
    using T = decltype(tag);
    constexpr int kVec = kVec16<T>;
    const bool vectorized = hidden % kVec == 0 && aligned16(out) && aligned16(word) &&
                            aligned16(position) && aligned16(token_type) &&
                            aligned16(weight) && aligned16(bias);
    const int vec = vectorized ? kVec : 1;
    const RowLaunch cfg = row_launch(hidden / vec, "embedding_layer_norm");
    auto run = [&](auto id_tag) {
      using Id = decltype(id_tag);
      auto go = [&](auto vec_tag) {
        launch_vec<T, Id, decltype(vec_tag)::value>(
            cfg, tokens, s, reinterpret_cast<T*>(out), reinterpret_cast<const Id*>(input_ids),
            reinterpret_cast<const Id*>(token_type_ids),
            reinterpret_cast<const Id*>(position_ids), reinterpret_cast<const T*>(word),
            reinterpret_cast<const T*>(position), reinterpret_cast<const T*>(token_type),
            reinterpret_cast<const T*>(weight), reinterpret_cast<const T*>(bias),
            static_cast<int>(hidden), static_cast<float>(eps));
      };
      if (vectorized) {
        go(std::integral_constant<int, kVec>{});
      } else {
        go(std::integral_constant<int, 1>{});
      }
    };
    if (ids_int64) {
      run(static_cast<long long>(0));
    } else {
      run(static_cast<int>(0));
    }
  });
}

}  // namespace bertfast
