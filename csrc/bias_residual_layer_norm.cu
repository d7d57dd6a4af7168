// CUDA kernel: LayerNorm(x + bias + residual) in one pass, one block per row.
// Twin of bertfast/triton/bias_residual_layer_norm.py; semantics in
// bertfast/ops/bias_residual_layer_norm.py.
//
// x and residual rows may be strided (their last dimension is contiguous); the output is
// contiguous. 16-byte loads when every pointer and row stride allows, element by element
// otherwise; the row stays in registers between the statistics and the normalisation.

#include <type_traits>

#include "common.cuh"

namespace bertfast {
namespace {

template <typename T, int VEC, int NV>
__global__ void bias_residual_layer_norm_kernel(
    T* __restrict__ out,             // (rows, hidden) contiguous
    const T* __restrict__ x,         // (rows, hidden), row stride stride_x
    const T* __restrict__ bias,      // (hidden,) or nullptr
    const T* __restrict__ residual,  // (rows, hidden), row stride stride_residual
    const T* __restrict__ weight,    // (hidden,)
    const T* __restrict__ ln_bias,   // (hidden,)
    int hidden, long long stride_x, long long stride_residual, float eps) {
  __shared__ float scratch[32];
  const long long row = blockIdx.x;
  const T* x_row = x + row * stride_x;
  const T* residual_row = residual + row * stride_residual;
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
      float a[VEC], r[VEC];
      load_vec<T, VEC>(x_row + vec * VEC, a);
      load_vec<T, VEC>(residual_row + vec * VEC, r);
#pragma unroll
      for (int j = 0; j < VEC; ++j) v[i][j] = a[j] + r[j];
      if (bias != nullptr) {
        float b[VEC];
        load_vec<T, VEC>(bias + vec * VEC, b);
#pragma unroll
        for (int j = 0; j < VEC; ++j) v[i][j] += b[j];
      }
    }
  }
  layer_norm_store<T, VEC, NV>(v, valid, weight, ln_bias, out + row * hidden, hidden, eps,
                               scratch);
}

template <typename T, int VEC>
void launch(const RowLaunch& cfg, long long rows, cudaStream_t stream, T* out, const T* x,
            const T* bias, const T* residual, const T* weight, const T* ln_bias, int hidden,
            long long stride_x, long long stride_residual, float eps) {
  const dim3 grid(static_cast<unsigned>(rows));
#define BF_LAUNCH(NV)                                                                    \
  bias_residual_layer_norm_kernel<T, VEC, NV><<<grid, cfg.threads, 0, stream>>>(         \
      out, x, bias, residual, weight, ln_bias, hidden, stride_x, stride_residual, eps)
  switch (cfg.nv) {
    case 1: BF_LAUNCH(1); break;
    case 2: BF_LAUNCH(2); break;
    case 4: BF_LAUNCH(4); break;
    default: BF_LAUNCH(8); break;
  }
#undef BF_LAUNCH
  BF_CHECK_LAUNCH("bias_residual_layer_norm_kernel");
}

}  // namespace

void bias_residual_layer_norm(std::uintptr_t out, std::uintptr_t x, std::uintptr_t bias,
                              std::uintptr_t residual, std::uintptr_t weight,
                              std::uintptr_t ln_bias, long long rows, long long hidden,
                              long long stride_x, long long stride_residual, int dtype,
                              double eps, int device, std::uintptr_t stream,
                              bool check_pointers) {
  if (rows < 0 || hidden <= 0) {
    throw_invalid("bias_residual_layer_norm: rows must be >= 0 and hidden > 0, got rows=" +
                  std::to_string(rows) + " hidden=" + std::to_string(hidden));
  }
  if (rows > 0x7fffffffLL) throw_invalid("bias_residual_layer_norm: more than 2^31-1 rows");
  check_dtype_code(dtype);
  if (rows == 0) return;
  set_device(device);
  if (check_pointers) {
    check_device_pointer("out", out, device);
    check_device_pointer("x", x, device);
    check_device_pointer("residual", residual, device);
  }
  auto s = reinterpret_cast<cudaStream_t>(stream);
  dispatch_float(dtype, [&](auto tag) {
    using T = decltype(tag);
    constexpr int kVec = kVec16<T>;
    const bool vectorized = hidden % kVec == 0 && stride_x % kVec == 0 &&
                            stride_residual % kVec == 0 && aligned16(out) && aligned16(x) &&
                            aligned16(residual) && aligned16(bias) && aligned16(weight) &&
                            aligned16(ln_bias);
    const RowLaunch cfg =
        row_launch(vectorized ? hidden / kVec : hidden, "bias_residual_layer_norm");
    auto go = [&](auto vec_tag) {
      launch<T, decltype(vec_tag)::value>(
          cfg, rows, s, reinterpret_cast<T*>(out), reinterpret_cast<const T*>(x),
          reinterpret_cast<const T*>(bias), reinterpret_cast<const T*>(residual),
          reinterpret_cast<const T*>(weight), reinterpret_cast<const T*>(ln_bias),
          static_cast<int>(hidden), stride_x, stride_residual, static_cast<float>(eps));
    };
    if (vectorized) {
      go(std::integral_constant<int, kVec>{});
    } else {
      go(std::integral_constant<int, 1>{});
    }
  });
}

}  // namespace bertfast
