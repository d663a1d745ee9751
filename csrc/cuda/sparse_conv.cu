// CUDA sparse convolution over a kernel map: volt::sparse_conv_forward and volt::sparse_conv_weight_grad.
// forward:     out (num_out, C_out) = sum_k scatter(out_idx_k, feat[in_idx_k] @ weight[k]), weight (K, C_in, C_out)
// weight_grad: grad (K, C_in, C_out) with grad[k] = feat[in_idx_k]^T @ grad_out[out_idx_k]
// Per tap: gather rows (index_select), one cuBLAS GEMM in the input dtype, then a scatter-add kernel into
// an accumulator (float32 for float16/bfloat16/float32 inputs, float64 for float64). Taps run in order on
// one stream and each output row receives at most one row per tap, so the scatter needs no atomics and
// the result is bit-reproducible. offsets (K+1,) int64 stays on the CPU: the GEMM sizes are host values.
#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace volt {
namespace {

constexpr int kThreads = 256;

// dst[idx[p], c] += src[p, c] for p < n; rows of idx are distinct, so no two threads share a target.
template <typename scalar_t, typename acc_t>
__global__ void scatter_add_rows(const scalar_t* __restrict__ src, const int32_t* __restrict__ idx, int64_t n,
                                 int64_t channels, int64_t num_rows, acc_t* __restrict__ dst) {
  const int64_t total = n * channels;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t p = e / channels, c = e - p * channels;
    const int64_t row = idx[p];
    CUDA_KERNEL_ASSERT(row >= 0 && row < num_rows);
    dst[row * channels + c] += static_cast<acc_t>(src[e]);
  }
}

unsigned grid_for(int64_t total) {  // grid-stride loop: enough blocks to fill any current GPU
  return unsigned(std::max<int64_t>(1, std::min<int64_t>((total + kThreads - 1) / kThreads, int64_t(1) << 16)));
}

struct MapView {
  at::Tensor in_idx, out_idx;
  std::vector<int64_t> off;
};

MapView check_map(const at::Tensor& feat, const at::Tensor& in_idx, const at::Tensor& out_idx,
                  const at::Tensor& offsets, int64_t kvol) {
  TORCH_CHECK_VALUE(in_idx.scalar_type() == at::kInt && out_idx.scalar_type() == at::kInt && in_idx.dim() == 1 &&
                        out_idx.sizes() == in_idx.sizes(), "in_idx/out_idx must be equal-length int32 vectors");
  TORCH_CHECK_VALUE(in_idx.device() == feat.device() && out_idx.device() == feat.device(),
                    "in_idx/out_idx must be on the features' device ", feat.device());
  TORCH_CHECK_VALUE(offsets.device().is_cpu() && offsets.scalar_type() == at::kLong && offsets.dim() == 1 &&
                        offsets.size(0) == kvol + 1, "offsets must be a CPU int64 vector of length K+1 = ", kvol + 1);
  const at::Tensor o = offsets.contiguous();
  MapView m{in_idx.contiguous(), out_idx.contiguous(),
            std::vector<int64_t>(o.data_ptr<int64_t>(), o.data_ptr<int64_t>() + kvol + 1)};
  TORCH_CHECK_VALUE(m.off[0] == 0 && m.off[kvol] == in_idx.numel(), "offsets must run from 0 to the number of pairs");
  for (int64_t k = 0; k < kvol; ++k) TORCH_CHECK_VALUE(m.off[k] <= m.off[k + 1], "offsets must be non-decreasing");
  return m;
}

at::Tensor sparse_conv_forward_cuda(const at::Tensor& feat_in, const at::Tensor& weight_in, const at::Tensor& in_idx,
                                    const at::Tensor& out_idx, const at::Tensor& offsets, int64_t num_out) {
  TORCH_CHECK_VALUE(feat_in.dim() == 2 && weight_in.dim() == 3 && weight_in.size(1) == feat_in.size(1),
                    "feat (N, C_in) and weight (K, C_in, C_out) do not match: ", feat_in.sizes(), " vs ",
                    weight_in.sizes());
  TORCH_CHECK_VALUE(feat_in.scalar_type() == weight_in.scalar_type(), "feat and weight dtypes differ");
  TORCH_CHECK_VALUE(weight_in.device() == feat_in.device(), "feat and weight must share a device");
  const c10::cuda::CUDAGuard guard(feat_in.device());
  const int64_t kvol = weight_in.size(0), cin = weight_in.size(1), cout = weight_in.size(2);
  const MapView m = check_map(feat_in, in_idx, out_idx, offsets, kvol);
  const at::Tensor feat = feat_in.contiguous(), weight = weight_in.contiguous();
  const auto acc_type = at::toAccumulateType(feat.scalar_type(), /*is_cuda=*/true);
  at::Tensor acc = at::zeros({num_out, cout}, feat.options().dtype(acc_type));
  int64_t most = 0;
  for (int64_t k = 0; k < kvol; ++k) most = std::max(most, m.off[k + 1] - m.off[k]);
  if (most == 0) return acc.to(feat.scalar_type());
  at::Tensor rows = at::empty({most, cin}, feat.options());  // reused by every tap
  at::Tensor prod = at::empty({most, cout}, feat.options());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  for (int64_t k = 0; k < kvol; ++k) {
    const int64_t n = m.off[k + 1] - m.off[k];
    if (n == 0) continue;
    at::Tensor r = rows.narrow(0, 0, n), p = prod.narrow(0, 0, n);
    at::index_select_out(r, feat, 0, m.in_idx.narrow(0, m.off[k], n));
    at::mm_out(p, r, weight[k]);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, feat.scalar_type(), "sparse_conv_forward_cuda", [&] {
      using acc_t = at::acc_type<scalar_t, true>;
      scatter_add_rows<scalar_t, acc_t><<<grid_for(n * cout), kThreads, 0, stream>>>(
          p.data_ptr<scalar_t>(), m.out_idx.data_ptr<int32_t>() + m.off[k], n, cout, num_out,
          acc.data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return acc.to(feat.scalar_type());
}

at::Tensor sparse_conv_weight_grad_cuda(const at::Tensor& feat_in, const at::Tensor& grad_in, const at::Tensor& in_idx,
                                        const at::Tensor& out_idx, const at::Tensor& offsets) {
  TORCH_CHECK_VALUE(feat_in.dim() == 2 && grad_in.dim() == 2, "feat and grad_out must be 2-D");
  TORCH_CHECK_VALUE(feat_in.scalar_type() == grad_in.scalar_type(), "feat and grad_out dtypes differ");
  TORCH_CHECK_VALUE(grad_in.device() == feat_in.device(), "feat and grad_out must share a device");
  const c10::cuda::CUDAGuard guard(feat_in.device());
  const int64_t kvol = offsets.numel() - 1, cin = feat_in.size(1), cout = grad_in.size(1);
  const MapView m = check_map(feat_in, in_idx, out_idx, offsets, kvol);
  const at::Tensor feat = feat_in.contiguous(), gout = grad_in.contiguous();
  at::Tensor grad = at::zeros({kvol, cin, cout}, feat.options());
  int64_t most = 0;
  for (int64_t k = 0; k < kvol; ++k) most = std::max(most, m.off[k + 1] - m.off[k]);
  if (most == 0) return grad;
  at::Tensor f_rows = at::empty({most, cin}, feat.options());
  at::Tensor g_rows = at::empty({most, cout}, feat.options());
  for (int64_t k = 0; k < kvol; ++k) {
    const int64_t n = m.off[k + 1] - m.off[k];
    if (n == 0) continue;
    at::Tensor f = f_rows.narrow(0, 0, n), g = g_rows.narrow(0, 0, n);
    at::index_select_out(f, feat, 0, m.in_idx.narrow(0, m.off[k], n));
    at::index_select_out(g, gout, 0, m.out_idx.narrow(0, m.off[k], n));
    at::Tensor gk = grad[k];
    at::mm_out(gk, f.t(), g);
  }
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(volt, CUDA, m) {
  m.impl("sparse_conv_forward", &sparse_conv_forward_cuda);
  m.impl("sparse_conv_weight_grad", &sparse_conv_weight_grad_cuda);
}

}  // namespace volt
