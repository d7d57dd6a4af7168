// pybind11 module bertfast._cuda: the CUDA launchers, called by bertfast/cuda/*.py.
//
// Every function takes raw device pointers (Python ints from tensor.data_ptr(), 0 for "none"),
// shapes and element strides, a dtype code (0 float32, 1 float16, 2 bfloat16), the CUDA device
// index, the caller's stream (torch.cuda.current_stream().cuda_stream) and whether to query
// each pointer's memory type and device first (check_pointers, on unless the caller knows
// them, as bertfast/cuda/*.py does). Outputs are allocated by the caller. Importing the
// module needs no GPU; calling a launcher without one raises RuntimeError.

#include <pybind11/pybind11.h>

#include <cstdint>

namespace py = pybind11;

namespace bertfast {
// Defined in the .cu file named like the op.
void embedding_layer_norm(std::uintptr_t out, std::uintptr_t input_ids,
                          std::uintptr_t token_type_ids, std::uintptr_t position_ids,
                          std::uintptr_t word, std::uintptr_t position, std::uintptr_t token_type,
                          std::uintptr_t weight, std::uintptr_t bias, long long tokens,
                          long long hidden, bool ids_int64, int dtype, double eps, int device,
                          std::uintptr_t stream, bool check_pointers);
void bias_residual_layer_norm(std::uintptr_t out, std::uintptr_t x, std::uintptr_t bias,
                              std::uintptr_t residual, std::uintptr_t weight,
                              std::uintptr_t ln_bias, long long rows, long long hidden,
                              long long stride_x, long long stride_residual, int dtype,
                              double eps, int device, std::uintptr_t stream,
                              bool check_pointers);
void bias_gelu(std::uintptr_t out, std::uintptr_t x, std::uintptr_t bias, long long rows,
               long long cols, long long stride_x, bool tanh_approximation, int dtype,
               int device, std::uintptr_t stream, bool check_pointers);
void attention(std::uintptr_t out, std::uintptr_t qkv, std::uintptr_t mask,
               std::uintptr_t cu_seqlens, long long batch, long long seq_len,
               long long max_seqlen, int num_heads, int head_dim, long long stride_qkv_batch,
               long long stride_qkv_token, long long stride_out_batch,
               long long stride_out_token, long long stride_mask_batch, int dtype, int device,
               std::uintptr_t stream, bool check_pointers);
}  // namespace bertfast

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "bertfast CUDA kernels (raw-pointer launchers; see bertfast/cuda/ for the API)";
  m.attr("DTYPE_FLOAT32") = 0;
  m.attr("DTYPE_FLOAT16") = 1;
  m.attr("DTYPE_BFLOAT16") = 2;
  m.attr("ATTENTION_HEAD_DIMS") = py::make_tuple(16, 32, 64, 128);
#ifdef BERTFAST_CUDA_ARCHS
  m.attr("CUDA_ARCHITECTURES") = BERTFAST_CUDA_ARCHS;
#endif

  m.def("embedding_layer_norm", &bertfast::embedding_layer_norm, py::arg("out"),
        py::arg("input_ids"), py::arg("token_type_ids"), py::arg("position_ids"),
        py::arg("word_embeddings"), py::arg("position_embeddings"),
        py::arg("token_type_embeddings"), py::arg("weight"), py::arg("bias"), py::arg("tokens"),
        py::arg("hidden"), py::arg("ids_int64"), py::arg("dtype"), py::arg("eps"),
        py::arg("device"), py::arg("stream"), py::arg("check_pointers") = true,
        "out[t] = LayerNorm(word[ids[t]] + position[pos[t]] + type[tt[t]]); tables contiguous.");
  m.def("bias_residual_layer_norm", &bertfast::bias_residual_layer_norm, py::arg("out"),
        py::arg("x"), py::arg("bias"), py::arg("residual"), py::arg("weight"),
        py::arg("ln_bias"), py::arg("rows"), py::arg("hidden"), py::arg("stride_x"),
        py::arg("stride_residual"), py::arg("dtype"), py::arg("eps"), py::arg("device"),
        py::arg("stream"), py::arg("check_pointers") = true,
        "out = LayerNorm(x + bias + residual) per row; bias may be 0.");
  m.def("bias_gelu", &bertfast::bias_gelu, py::arg("out"), py::arg("x"), py::arg("bias"),
        py::arg("rows"), py::arg("cols"), py::arg("stride_x"), py::arg("tanh"),
        py::arg("dtype"), py::arg("device"), py::arg("stream"), py::arg("check_pointers") = true,
        "out = GELU(x + bias) (erf form, or tanh form when tanh=True); bias may be 0.");
  m.def("attention", &bertfast::attention, py::arg("out"), py::arg("qkv"), py::arg("mask"),
        py::arg("cu_seqlens"), py::arg("batch"), py::arg("seq_len"), py::arg("max_seqlen"),
        py::arg("num_heads"), py::arg("head_dim"), py::arg("stride_qkv_batch"),
        py::arg("stride_qkv_token"), py::arg("stride_out_batch"), py::arg("stride_out_token"),
        py::arg("stride_mask_batch"), py::arg("dtype"), py::arg("device"), py::arg("stream"),
        py::arg("check_pointers") = true,
        "Self-attention from fused QKV: padded (mask may be 0) or packed (cu_seqlens).");
}
