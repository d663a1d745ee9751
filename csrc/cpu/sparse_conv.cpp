// CPU sparse convolution over a kernel map: volt::sparse_conv_forward and volt::sparse_conv_weight_grad.
// forward:     out (num_out, C_out) = sum_k scatter(out_idx_k, feat[in_idx_k] @ weight[k]), weight (K, C_in, C_out)
// weight_grad: grad (K, C_in, C_out) with grad[k] = feat[in_idx_k]^T @ grad_out[out_idx_k]
//
// Forward is output-stationary: each task owns a block of output rows and adds the taps in order, finding
// a tap's pairs for the block by binary search (pairs sorted by output, as the map builders make them) or
// through a neighbour table (other orders, e.g. transposed maps). The map is checked on the way: indices in
// range, at most one pair per output row and tap.
// Weight grad sums fixed chunks of pairs into partials, then adds the partials of a tap in chunk order.
// Tasks are fixed, so every value comes from the same operations in the same order for any thread count;
// threads take tasks from a counter, so a thread the OS delays does not stall the others. float32 uses
// register-tiled vector kernels (cpu/sparse_conv_tiles.h) compiled for AVX-512, AVX2 and the baseline and
// picked at run time; float64 uses plain loops; float16/bfloat16 compute in float32.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "cpu/run_tasks.h"
#include "cpu/sparse_conv_tiles.h"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <vector>

namespace volt {
namespace {

using namespace tiles;
constexpr int64_t kPairBlock = 256;    // pairs summed in registers before they reach a partial
constexpr int64_t kRowBlock = 512;     // output rows per forward task
constexpr int64_t kTapChunk = 32;      // taps per neighbour table (bounds its memory for k5 maps)
constexpr int64_t kPairChunk = 4096;   // pairs per weight-grad task (one partial each)

using cpu::run_tasks;  // f(task) for every task in [0, n)

// One tap's pairs as the forward sees them: sorted by output row (searched), or through a table row.
struct TapView {
  const int32_t* in;
  const int32_t* out;
  int64_t n;
  const int32_t* table;  // num_out entries (input row or -1) when the pairs are not sorted by output
};

// Rows o in [o0, o1) that tap `t` feeds, ascending, with their input rows; returns how many.
VOLT_INLINE int64_t tap_rows(const TapView& t, int64_t o0, int64_t o1, int32_t* ins, int32_t* outs) {
  int64_t n = 0;
  if (t.table != nullptr) {
    for (int64_t r = o0; r < o1; ++r)
      if (t.table[r] >= 0) {
        ins[n] = t.table[r];
        outs[n++] = int32_t(r);
      }
    return n;
  }
  for (int64_t p = std::lower_bound(t.out, t.out + t.n, int32_t(o0)) - t.out; p < t.n && t.out[p] < o1; ++p) {
    ins[n] = t.in[p];
    outs[n++] = t.out[p];
  }
  return n;
}

// The float32 problem of one call; tasks add their row block (forward) or pair chunk (weight grad).
struct Job {
  const float* feat;
  const float* weight;  // forward: (K, C_in, C_out)
  const float* gout;    // weight grad: (num_out, C_out)
  const TapView* taps;  // forward
  int64_t cin, cout;
};

// Output rows [o0, o1) (zeroed by the caller) accumulate taps [k0, k1) in order.
template <typename T>
VOLT_INLINE void fwd_block(const Job& j, float* out, int64_t k0, int64_t k1, int64_t o0, int64_t o1) {
  int32_t ins[kRowBlock], outs[kRowBlock];
  const float* f[kRowBlock];
  float* o[kRowBlock];
  for (int64_t k = k0; k < k1; ++k) {
    const int64_t n = tap_rows(j.taps[k], o0, o1, ins, outs);
    for (int64_t r = 0; r < n; ++r) {
      f[r] = j.feat + int64_t(ins[r]) * j.cin;
      o[r] = out + int64_t(outs[r]) * j.cout;
    }
    const float* w = j.weight + k * j.cin * j.cout;
    int64_t r = 0;
    for (; r + T::R <= n; r += T::R) fwd_rows<T, T::R>(f + r, o + r, w, j.cin, j.cout);
    fwd_tail<T>(f + r, o + r, w, j.cin, j.cout, n - r);
  }
}

void fwd_block_f64(const double* feat, const double* weight, double* out, const TapView* taps, int64_t k0,
                   int64_t k1, int64_t cin, int64_t cout, int64_t o0, int64_t o1) {
  int32_t ins[kRowBlock], outs[kRowBlock];
  for (int64_t k = k0; k < k1; ++k) {
    const int64_t n = tap_rows(taps[k], o0, o1, ins, outs);
    for (int64_t r = 0; r < n; ++r)
      for (int64_t co = 0; co < cout; ++co) {
        double s = 0;
        for (int64_t ci = 0; ci < cin; ++ci) s += feat[int64_t(ins[r]) * cin + ci] * weight[(k * cin + ci) * cout + co];
        out[int64_t(outs[r]) * cout + co] += s;
      }
  }
}

// partial (C_in, C_out) = sum over the n pairs of one chunk (index pointers already offset).
template <typename T>
VOLT_INLINE void wgrad_chunk(const Job& j, const int32_t* in_idx, const int32_t* out_idx, int64_t n, float* partial) {
  std::fill(partial, partial + j.cin * j.cout, 0.f);
  for (int64_t b = 0; b < n; b += kPairBlock) {
    const int64_t e = std::min(n, b + kPairBlock);
    int64_t ci = 0;
    for (; ci + T::R <= j.cin; ci += T::R)
      wgrad_rows<T, T::R>(j.feat, j.gout, in_idx, out_idx, b, e, j.cin, j.cout, ci, partial);
    wgrad_tail<T>(j.feat, j.gout, in_idx, out_idx, b, e, j.cin, j.cout, ci, partial, j.cin - ci);
  }
}

// One entry point per instruction set (vector width and tile sizes differ), chosen once at run time.
VOLT_TILE_VARIANTS(fwd_block, (const Job& j, float* out, int64_t k0, int64_t k1, int64_t o0, int64_t o1),
                   (j, out, k0, k1, o0, o1))
VOLT_TILE_VARIANTS(wgrad_chunk, (const Job& j, const int32_t* in_idx, const int32_t* out_idx, int64_t n, float* partial),
                   (j, in_idx, out_idx, n, partial))

void wgrad_chunk_f64(const double* feat, const double* gout, const int32_t* in_idx, const int32_t* out_idx, int64_t n,
                     int64_t cin, int64_t cout, double* partial) {
  std::fill(partial, partial + cin * cout, 0.0);
  for (int64_t p = 0; p < n; ++p)
    for (int64_t ci = 0; ci < cin; ++ci)
      for (int64_t co = 0; co < cout; ++co)
        partial[ci * cout + co] += feat[int64_t(in_idx[p]) * cin + ci] * gout[int64_t(out_idx[p]) * cout + co];
}

std::vector<int64_t> checked_offsets(const at::Tensor& in_idx, const at::Tensor& out_idx, const at::Tensor& offsets,
                                     int64_t kvol) {
  TORCH_CHECK_VALUE(in_idx.scalar_type() == at::kInt && out_idx.scalar_type() == at::kInt && in_idx.dim() == 1 &&
                        out_idx.sizes() == in_idx.sizes(), "in_idx/out_idx must be equal-length int32 vectors");
  TORCH_CHECK_VALUE(offsets.device().is_cpu() && offsets.scalar_type() == at::kLong && offsets.dim() == 1 &&
                        offsets.size(0) == kvol + 1, "offsets must be a CPU int64 vector of length K+1 = ", kvol + 1);
  const at::Tensor o = offsets.contiguous();
  std::vector<int64_t> off(o.data_ptr<int64_t>(), o.data_ptr<int64_t>() + kvol + 1);
  TORCH_CHECK_VALUE(off[0] == 0 && off[kvol] == in_idx.numel(), "offsets must run from 0 to the number of pairs");
  for (int64_t k = 0; k < kvol; ++k) TORCH_CHECK_VALUE(off[k] <= off[k + 1], "offsets must be non-decreasing");
  return off;
}

// float16/bfloat16 compute in float32; float32/float64 in their own type.
at::ScalarType compute_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

at::Tensor sparse_conv_forward_cpu(const at::Tensor& feat_in, const at::Tensor& weight_in, const at::Tensor& in_idx_in,
                                   const at::Tensor& out_idx_in, const at::Tensor& offsets, int64_t num_out) {
  TORCH_CHECK_VALUE(feat_in.dim() == 2 && weight_in.dim() == 3 && weight_in.size(1) == feat_in.size(1),
                    "feat (N, C_in) and weight (K, C_in, C_out) do not match: ", feat_in.sizes(), " vs ",
                    weight_in.sizes());
  TORCH_CHECK_VALUE(feat_in.scalar_type() == weight_in.scalar_type() && at::isFloatingType(feat_in.scalar_type()),
                    "feat and weight must share one floating dtype");
  const int64_t kvol = weight_in.size(0), cin = weight_in.size(1), cout = weight_in.size(2), num_in = feat_in.size(0);
  const std::vector<int64_t> off = checked_offsets(in_idx_in, out_idx_in, offsets, kvol);
  const at::ScalarType st = compute_type(feat_in.scalar_type());
  const at::Tensor feat = feat_in.to(st).contiguous(), weight = weight_in.to(st).contiguous();
  const at::Tensor in_idx = in_idx_in.contiguous(), out_idx = out_idx_in.contiguous();
  if (kvol == 0) return at::zeros({num_out, cout}, feat_in.options());
  at::Tensor out = at::empty({num_out, cout}, feat.options());  // rows zeroed by their task (first tap chunk)
  const int32_t* pi = in_idx.data_ptr<int32_t>();
  const int32_t* po = out_idx.data_ptr<int32_t>();
  std::vector<TapView> taps(kvol);
  Job job{};
  if (st == at::kFloat) job = Job{feat.data_ptr<float>(), weight.data_ptr<float>(), nullptr, taps.data(), cin, cout};
  std::vector<int32_t> tables(std::min(kvol, kTapChunk) * num_out);  // rows for unsorted taps of one chunk
  for (int64_t k0 = 0; k0 < kvol; k0 += kTapChunk) {
    const int64_t k1 = std::min(kvol, k0 + kTapChunk);
    std::atomic<bool> bad{false};
    run_tasks(k1 - k0, [&](int64_t t) {  // check tap k0 + t; build a table row unless sorted by output
      const int64_t k = k0 + t, p0 = off[k], n = off[k + 1] - off[k];
      bool sorted = true;
      for (int64_t p = p0; p < p0 + n; ++p) {
        if (pi[p] < 0 || pi[p] >= num_in || po[p] < 0 || po[p] >= num_out) {
          bad = true;
          return;
        }
        sorted = sorted && (p == p0 || po[p] > po[p - 1]);
      }
      taps[k] = TapView{pi + p0, po + p0, n, nullptr};
      if (sorted) return;
      int32_t* row = tables.data() + t * num_out;
      std::fill(row, row + num_out, -1);
      for (int64_t p = p0; p < p0 + n; ++p) {
        if (row[po[p]] >= 0) bad = true;  // two pairs for one output in one tap
        row[po[p]] = pi[p];
      }
      taps[k].table = row;
    });
    TORCH_CHECK_VALUE(!bad, "invalid kernel map: an index is out of range or an output row has two pairs in one tap");
    run_tasks((num_out + kRowBlock - 1) / kRowBlock, [&](int64_t b) {
      const int64_t o0 = b * kRowBlock, o1 = std::min(num_out, o0 + kRowBlock);
      if (k0 == 0)
        std::memset(static_cast<char*>(out.data_ptr()) + o0 * cout * out.element_size(), 0,
                    (o1 - o0) * cout * out.element_size());
      if (st == at::kFloat)
        fwd_block_best(job, out.data_ptr<float>(), k0, k1, o0, o1);
      else
        fwd_block_f64(feat.data_ptr<double>(), weight.data_ptr<double>(), out.data_ptr<double>(), taps.data(), k0,
                      k1, cin, cout, o0, o1);
    });
  }
  return out.to(feat_in.scalar_type());
}

at::Tensor sparse_conv_weight_grad_cpu(const at::Tensor& feat_in, const at::Tensor& grad_in,
                                       const at::Tensor& in_idx_in, const at::Tensor& out_idx_in,
                                       const at::Tensor& offsets) {
  TORCH_CHECK_VALUE(feat_in.dim() == 2 && grad_in.dim() == 2, "feat and grad_out must be 2-D");
  TORCH_CHECK_VALUE(feat_in.scalar_type() == grad_in.scalar_type() && at::isFloatingType(feat_in.scalar_type()),
                    "feat and grad_out must share one floating dtype");
  const int64_t kvol = offsets.numel() - 1, cin = feat_in.size(1), cout = grad_in.size(1);
  const int64_t num_in = feat_in.size(0), num_out = grad_in.size(0);
  const std::vector<int64_t> off = checked_offsets(in_idx_in, out_idx_in, offsets, kvol);
  const at::ScalarType st = compute_type(feat_in.scalar_type());
  const at::Tensor feat = feat_in.to(st).contiguous(), gout = grad_in.to(st).contiguous();
  const at::Tensor in_idx = in_idx_in.contiguous(), out_idx = out_idx_in.contiguous();
  const int32_t* pi = in_idx.data_ptr<int32_t>();
  const int32_t* po = out_idx.data_ptr<int32_t>();
  std::vector<int64_t> chunk_start, chunk_tap, first_chunk(kvol + 1);  // chunks never straddle taps
  for (int64_t k = 0; k < kvol; ++k) {
    first_chunk[k] = int64_t(chunk_start.size());
    for (int64_t p = off[k]; p < off[k + 1]; p += kPairChunk) {
      chunk_start.push_back(p);
      chunk_tap.push_back(k);
    }
  }
  const int64_t chunks = int64_t(chunk_start.size());
  first_chunk[kvol] = chunks;
  at::Tensor partial = at::empty({chunks, cin, cout}, feat.options());
  Job job{};
  if (st == at::kFloat) job = Job{feat.data_ptr<float>(), nullptr, gout.data_ptr<float>(), nullptr, cin, cout};
  std::atomic<bool> bad{false};
  run_tasks(chunks, [&](int64_t c) {
    const int64_t p0 = chunk_start[c], n = std::min(off[chunk_tap[c] + 1], p0 + kPairChunk) - p0;
    for (int64_t p = p0; p < p0 + n; ++p)
      if (pi[p] < 0 || pi[p] >= num_in || po[p] < 0 || po[p] >= num_out) {
        bad = true;
        return;
      }
    if (st == at::kFloat)
      wgrad_chunk_best(job, pi + p0, po + p0, n, partial.data_ptr<float>() + c * cin * cout);
    else
      wgrad_chunk_f64(feat.data_ptr<double>(), gout.data_ptr<double>(), pi + p0, po + p0, n, cin, cout,
                      partial.data_ptr<double>() + c * cin * cout);
  });
  TORCH_CHECK_VALUE(!bad, "invalid kernel map: an index is out of range");
  at::Tensor grad = at::zeros({kvol, cin, cout}, feat.options());
  run_tasks(kvol, [&](int64_t k) {  // partials of tap k added in chunk order
    AT_DISPATCH_FLOATING_TYPES(st, "sparse_conv_weight_grad_cpu", [&] {
      scalar_t* g = grad.data_ptr<scalar_t>() + k * cin * cout;
      for (int64_t c = first_chunk[k]; c < first_chunk[k + 1]; ++c) {
        const scalar_t* src = partial.data_ptr<scalar_t>() + c * cin * cout;
        for (int64_t e = 0; e < cin * cout; ++e) g[e] += src[e];
      }
    });
  });
  return grad.to(feat_in.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(volt, CPU, m) {
  m.impl("sparse_conv_forward", &sparse_conv_forward_cpu);
  m.impl("sparse_conv_weight_grad", &sparse_conv_weight_grad_cpu);
}

}  // namespace volt
