// Shared pieces of the bertfast CUDA kernels: error checks, device checks, dtype helpers,
// 16-byte vector loads/stores and warp/block reductions.
//
// The extension links only the CUDA runtime (no libtorch). Kernels receive raw device
// pointers, shapes, element strides, a dtype code and the caller's stream; every error is a
// C++ exception that pybind11 turns into a Python exception (std::runtime_error ->
// RuntimeError for CUDA failures, std::invalid_argument -> ValueError for bad arguments).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace bertfast {

// ---------------------------------------------------------------------------------------------
// Errors

[[noreturn]] inline void throw_cuda_error(cudaError_t err, const char* what, const char* file,
                                          int line) {
  throw std::runtime_error(std::string("bertfast._cuda: ") + what + " failed: " +
                           cudaGetErrorName(err) + ": " + cudaGetErrorString(err) + " (" + file +
                           ":" + std::to_string(line) + ")");
}

// Check a CUDA runtime call.
#define BF_CUDA_CHECK(expr)                                               \
  do {                                                                    \
    cudaError_t bf_err_ = (expr);                                         \
    if (bf_err_ != cudaSuccess) {                                         \
      ::bertfast::throw_cuda_error(bf_err_, #expr, __FILE__, __LINE__);   \
    }                                                                     \
  } while (0)

// Check the launch that was just made (bad configuration, missing kernel image, ...).
#define BF_CHECK_LAUNCH(kernel_name)                                                \
  do {                                                                              \
    cudaError_t bf_err_ = cudaGetLastError();                                       \
    if (bf_err_ != cudaSuccess) {                                                   \
      ::bertfast::throw_cuda_error(bf_err_, "launch of " kernel_name, __FILE__,     \
                                   __LINE__);                                       \
    }                                                                               \
  } while (0)

[[noreturn]] inline void throw_invalid(const std::string& msg) {
  throw std::invalid_argument("bertfast._cuda: " + msg);
}

// ---------------------------------------------------------------------------------------------
// Device checks, made before every launch: the clear error on a machine without a GPU, and
// the guard against a host pointer slipping through.

// Make `device` current for this thread's CUDA runtime. The extension carries its own
// (static) runtime, whose current device is independent of the one PyTorch's runtime tracks;
// both runtimes share the device's primary context, so PyTorch's allocations and streams are
// valid here. The device count is queried once per process and the current device is
// remembered per thread (only this extension sets it in its runtime), so a launch on the
// device already current makes no CUDA API call here.
struct DeviceCount {
  int count = 0;
  cudaError_t error = cudaSuccess;
};

inline const DeviceCount& device_count() {
  static const DeviceCount cached = [] {
    DeviceCount found;
    found.error = cudaGetDeviceCount(&found.count);
    if (found.error != cudaSuccess) cudaGetLastError();  // clear the (non-sticky) error
    return found;
  }();
  return cached;
}

inline void set_device(int device) {
  thread_local int current = -1;
  if (device == current) return;
  const DeviceCount& devices = device_count();
  if (devices.error != cudaSuccess || devices.count == 0) {
    throw std::runtime_error(
        std::string("bertfast._cuda: no usable CUDA device (cudaGetDeviceCount: ") +
        (devices.error == cudaSuccess ? std::string("0 devices")
                                      : cudaGetErrorString(devices.error)) +
        "); the CUDA kernels need an NVIDIA GPU with compute capability 8.0 or newer");
  }
  if (device < 0 || device >= devices.count) {
    throw_invalid("device index " + std::to_string(device) + " out of range; " +
                  std::to_string(devices.count) + " CUDA device(s) visible");
  }
  BF_CUDA_CHECK(cudaSetDevice(device));
  current = device;
}

// `ptr` must be device (or managed) memory on `device`. A pointer query per tensor: made
// when the caller asks (check_pointers), which the Python launchers skip because torch has
// told them each tensor's device already.
inline void check_device_pointer(const char* name, std::uintptr_t ptr, int device) {
  if (ptr == 0) throw_invalid(std::string(name) + " is a null pointer");
  cudaPointerAttributes attr{};
  cudaError_t err = cudaPointerGetAttributes(&attr, reinterpret_cast<const void*>(ptr));
  if (err != cudaSuccess) {
    cudaGetLastError();
    throw std::runtime_error(std::string("bertfast._cuda: cannot query pointer ") + name + ": " +
                             cudaGetErrorString(err));
  }
  if (attr.type != cudaMemoryTypeDevice && attr.type != cudaMemoryTypeManaged) {
    throw_invalid(std::string(name) + " is not CUDA device memory (a host pointer?)");
  }
  if (attr.device != device) {
    throw_invalid(std::string(name) + " is on cuda:" + std::to_string(attr.device) +
                  " but the kernel runs on cuda:" + std::to_string(device));
  }
}

inline bool aligned16(std::uintptr_t ptr) { return (ptr & 15u) == 0; }

// ---------------------------------------------------------------------------------------------
// Dtypes: the codes Python passes (bertfast/cuda/_launch.py keeps the same table).

enum DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

inline const char* dtype_name(int code) {
  switch (code) {
    case kFloat32: return "float32";
    case kFloat16: return "float16";
    case kBFloat16: return "bfloat16";
    default: return "unknown";
  }
}

// Launchers check their arguments (this among them) before touching the device.
inline void check_dtype_code(int code) {
  if (code != kFloat32 && code != kFloat16 && code != kBFloat16) {
    throw_invalid("dtype code " + std::to_string(code) +
                  " is not supported; supported: 0 (float32), 1 (float16), 2 (bfloat16)");
  }
}

// Call f(T{}) with T the element type of a dtype code.
template <typename F>
inline void dispatch_float(int code, F&& f) {
  check_dtype_code(code);
  switch (code) {
    case kFloat32: f(float{}); break;
    case kFloat16: f(__half{}); break;
    default: f(__nv_bfloat16{}); break;
  }
}

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// Elements of T in one 16-byte vector.
template <typename T>
constexpr int kVec16 = 16 / static_cast<int>(sizeof(T));

// ---------------------------------------------------------------------------------------------
// Vector loads and stores. VEC is kVec16<T> (one 16-byte access; the pointer must be 16-byte
// aligned) or 1 (the scalar fallback). Values are converted to and from fp32.

template <typename T, int VEC>
__device__ __forceinline__ void load_vec(const T* __restrict__ ptr, float (&out)[VEC]) {
  static_assert(VEC == 1 || VEC * sizeof(T) == 16, "VEC must be 1 or one 16-byte vector");
  if constexpr (VEC == 1) {
    out[0] = to_float(*ptr);
  } else {
    alignas(16) T elems[VEC];
    *reinterpret_cast<uint4*>(elems) = *reinterpret_cast<const uint4*>(ptr);
#pragma unroll
    for (int i = 0; i < VEC; ++i) out[i] = to_float(elems[i]);
  }
}

template <typename T, int VEC>
__device__ __forceinline__ void store_vec(T* __restrict__ ptr, const float (&in)[VEC]) {
  static_assert(VEC == 1 || VEC * sizeof(T) == 16, "VEC must be 1 or one 16-byte vector");
  if constexpr (VEC == 1) {
    *ptr = from_float<T>(in[0]);
  } else {
    alignas(16) T elems[VEC];
#pragma unroll
    for (int i = 0; i < VEC; ++i) elems[i] = from_float<T>(in[i]);
    *reinterpret_cast<uint4*>(ptr) = *reinterpret_cast<const uint4*>(elems);
  }
}

// ---------------------------------------------------------------------------------------------
// Reductions

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// Sum over the whole block (blockDim.x a multiple of 32, at most 1024); every thread gets the
// total. `scratch` holds 32 floats of shared memory; calls may follow each other directly.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  v = warp_sum(v);
  const int warps = blockDim.x >> 5;
  if (warps == 1) return v;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  __syncthreads();  // a previous call's readers are done with scratch
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  return warp_sum(lane < warps ? scratch[lane] : 0.0f);
}

// ---------------------------------------------------------------------------------------------
// LayerNorm of one row held in registers, shared by embedding_layer_norm and
// bias_residual_layer_norm. Thread t holds vectors t, t + blockDim.x, ... (NV of them, VEC
// elements each) of a row of `hidden` elements; `valid[i]` says whether its i-th vector lies
// inside the row (elements outside must be 0). Statistics are exact two-pass fp32: the mean,
// then the mean of squared deviations, as torch.nn.functional.layer_norm computes them.

template <typename T, int VEC, int NV>
__device__ __forceinline__ void layer_norm_store(float (&v)[NV][VEC], const bool (&valid)[NV],
                                                 const T* __restrict__ weight,
                                                 const T* __restrict__ bias, T* __restrict__ out,
                                                 int hidden, float eps, float* scratch) {
  float sum = 0.0f;
#pragma unroll
  for (int i = 0; i < NV; ++i)
#pragma unroll
    for (int j = 0; j < VEC; ++j) sum += v[i][j];
  const float mean = block_sum(sum, scratch) / static_cast<float>(hidden);
  float sq = 0.0f;
#pragma unroll
  for (int i = 0; i < NV; ++i)
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      v[i][j] = valid[i] ? v[i][j] - mean : 0.0f;
      sq += v[i][j] * v[i][j];
    }
  const float var = block_sum(sq, scratch) / static_cast<float>(hidden);
  const float rstd = rsqrtf(var + eps);
#pragma unroll
  for (int i = 0; i < NV; ++i) {
    if (!valid[i]) continue;
    const int col = (threadIdx.x + i * blockDim.x) * VEC;
    float w[VEC], b[VEC], y[VEC];
    load_vec<T, VEC>(weight + col, w);
    load_vec<T, VEC>(bias + col, b);
#pragma unroll
    for (int j = 0; j < VEC; ++j) y[j] = v[i][j] * rstd * w[j] + b[j];
    store_vec<T, VEC>(out + col, y);
  }
}

// Threads and vectors per thread for a row of `nvec` vectors: the smallest NV in {1, 2, 4, 8}
// that keeps the block at 256 threads or fewer, else NV = 8 with up to 1024 threads.
struct RowLaunch {
  int nv;
  int threads;
};

inline RowLaunch row_launch(long long nvec, const char* what) {
  const long long max_vectors = 8LL * 1024;
  if (nvec > max_vectors) {
    throw_invalid(std::string(what) + ": rows of " + std::to_string(nvec) +
                  " vectors are too long; at most " + std::to_string(max_vectors) +
                  " vectors (16 bytes each, or elements when the row is not 16-byte aligned)");
  }
  int nv = 1;
  while (nv < 8 && nvec > nv * 256LL) nv *= 2;
  long long threads = (nvec + nv - 1) / nv;
  threads = (threads + 31) / 32 * 32;
  return RowLaunch{nv, static_cast<int>(threads < 32 ? 32 : threads)};
}

}  // namespace bertfast
