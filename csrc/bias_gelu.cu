// CUDA kernel: GELU(x + bias), exact erf form (BERT's "gelu") or tanh form ("gelu_new").
// Twin of bertfast/triton/bias_gelu.py; semantics in bertfast/ops/bias_gelu.py.
//
// Each block covers 128 vectors of one row (blockIdx.x = row * chunks + chunk), so no thread
// divides a 64-bit index. Math in fp32 with the accurate erff/tanhf: this file must not be
// compiled with --use_fast_math (CMakeLists.txt does not).

#include <type_traits>

#include "common.cuh"

namespace bertfast {
namespace {

constexpr int kThreads = 128;

template <bool TANH>
__device__ __forceinline__ float gelu(float x) {
  if constexpr (TANH) {
    constexpr float kSqrt2OverPi = 0.7978845608028654f;
    const float inner = kSqrt2OverPi * (x + 0.044715f * x * x * x);
    return 0.5f * x * (1.0f + tanhf(inner));
  } else {
    constexpr float kSqrtHalf = 0.7071067811865476f;
    return 0.5f * x * (1.0f + erff(x * kSqrtHalf));
  }
}

template <typename T, int VEC, bool TANH>
__global__ void __launch_bounds__(kThreads) bias_gelu_kernel(
    T* __restrict__ out,        // (rows, cols) contiguous
    const T* __restrict__ x,    // (rows, cols), row stride stride_x
    const T* __restrict__ bias, // (cols,) or nullptr
    int cols, long long stride_x, int chunks) {
  const long long row = blockIdx.x / chunks;
  const int chunk = blockIdx.x - static_cast<int>(row) * chunks;
  const int col = (chunk * kThreads + threadIdx.x) * VEC;
  if (col >= cols) return;
  float v[VEC];
  load_vec<T, VEC>(x + row * stride_x + col, v);
  if (bias != nullptr) {
    float b[VEC];
    load_vec<T, VEC>(bias + col, b);
#pragma unroll
    for (int j = 0; j < VEC; ++j) v[j] += b[j];
  }
#pragma unroll
  for (int j = 0; j < VEC; ++j) v[j] = gelu<TANH>(v[j]);
  store_vec<T, VEC>(out + row * cols + col, v);
}

}  // namespace

void bias_gelu(std::uintptr_t out, std::uintptr_t x, std::uintptr_t bias, long long rows,
               long long cols, long long stride_x, bool tanh_approximation, int dtype,
               int device, std::uintptr_t stream, bool check_pointers) {
  if (rows < 0 || cols < 0) {
    throw_invalid("bias_gelu: rows and cols must be >= 0, got rows=" + std::to_string(rows) +
                  " cols=" + std::to_string(cols));
  }
  check_dtype_code(dtype);
  if (rows == 0 || cols == 0) return;
  if (cols > 0x7fffffffLL) throw_invalid("bias_gelu: rows longer than 2^31-1 elements");
  set_device(device);
  if (check_pointers) {
    check_device_pointer("out", out, device);
    check_device_pointer("x", x, device);
  }
  auto s = reinterpret_cast<cudaStream_t>(stream);
  dispatch_float(dtype, [&](auto tag) {
    using T = decltype(tag);
    constexpr int kVec = kVec16<T>;
    const bool vectorized = cols % kVec == 0 && stride_x % kVec == 0 && aligned16(out) &&
                            aligned16(x) && aligned16(bias);
    const long long vectors = vectorized ? cols / kVec : cols;
    const long long chunks = (vectors + kThreads - 1) / kThreads;
    if (rows * chunks > 0x7fffffffLL) {
      throw_invalid("bias_gelu: input of " + std::to_string(rows) + " x " +
                    std::to_string(cols) + " is too large for one launch");
    }
    const dim3 grid(static_cast<unsigned>(rows * chunks));
    auto go = [&](auto vec_tag, auto tanh_tag) {
      bias_gelu_kernel<T, decltype(vec_tag)::value, decltype(tanh_tag)::value>
          <<<grid, kThreads, 0, s>>>(reinterpret_cast<T*>(out), reinterpret_cast<const T*>(x),
                                     reinterpret_cast<const T*>(bias), static_cast<int>(cols),
                                     stride_x, static_cast<int>(chunks));
      BF_CHECK_LAUNCH("bias_gelu_kernel");
    };
    auto go_vec = [&](auto tanh_tag) {
      if (vectorized) {
        go(std::integral_constant<int, kVec>{}, tanh_tag);
      } else {
        go(std::integral_constant<int, 1>{}, tanh_tag);
      }
    };
    if (tanh_approximation) {
      go_vec(std::true_type{});
    } else {
      go_vec(std::false_type{});
    }
  });
}

}  // namespace bertfast
