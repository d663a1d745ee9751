// CPU slot-wise products of the tokenizer and detokenizer (volt/ops/slot_matmul.py). Voxel v sits in token
// t_v at slot s_v; the layers apply one matrix per slot. Work is planned once per layout and runs as
// gather -> GEMM -> scatter over groups of voxels that share a slot (the matrix) and a block of consecutive
// tokens (so one task owns each block's token rows and no accumulation needs atomics):
//   slot_plan:   order (V,) int32 = voxels sorted by (block(token), slot), stable in voxel index; token (V,)
//                int32 = voxel2token[order]; groups (B*S+1,) int64 = start of group (b, s) in order; blocks
//                (B+1,) int64 = first token of each block. A token's block is floor(voxels in earlier tokens /
//                kBlockVoxels).
//   slot_matmul: to voxels (detokenizer; tokenizer's feature gradient): out[order[p]] = bias + x[token[p]] @
//                w[s], one task per block, every voxel row written once. To tokens (tokenizer; detokenizer's
//                token gradient): out[t] = bias + sum over the voxels of t of x[v] @ w[s]; one task per block
//                adds its groups in slot order into its own token rows. w is (S, C_in, C_out).
//   slot_outer:  grad (S, C_a, C_b), grad[s] = sum over the voxels in slot s of a[row]^T b[row'], with a read
//                at token rows and b at voxel rows or the other way round (the weight gradients); one task per
//                slot adds the slot's groups in block order.
// Every task's work and order are fixed by the plan, so results do not depend on the thread count. Each task checks
// the plan entries it is about to use (no serial pass over V); a bad entry raises once all tasks are done. Float32 only
// (the Python side keeps other dtypes on torch); the register tiles are sparse convolution's
// (cpu/sparse_conv_tiles.h), compiled for AVX-512, AVX2 and the baseline and picked at run time.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "cpu/run_tasks.h"
#include "cpu/sparse_conv_tiles.h"

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <tuple>
#include <vector>

namespace volt {
namespace {

using namespace tiles;
using cpu::run_tasks;
constexpr int64_t kBlockVoxels = 4096;  // voxels per token block (about 33 rows per slot group at 125 slots)
constexpr int64_t kMaxRows = 1024;      // rows gathered at once within a group

struct Plan {
  const int32_t* order;
  const int32_t* token;
  const int64_t* groups;
  const int64_t* blocks;  // null when the caller has no use for it
  int64_t num_blocks, num_slots;
  int64_t begin(int64_t b, int64_t s) const { return groups[b * num_slots + s]; }
  int64_t end(int64_t b, int64_t s) const { return groups[b * num_slots + s + 1]; }
};

// Rows [p0, p1) of the plan: an operand gathered through `src_idx` from `src` (C_in wide), multiplied by w
// (C_in x C_out) and added into rows `dst_idx` of `dst`. Duplicate destination rows are fine: the tiles store
// row after row.
template <typename T>
VOLT_INLINE void gemm_rows(const float* src, const int32_t* src_idx, float* dst, const int32_t* dst_idx,
                           int64_t p0, int64_t p1, const float* w, int64_t cin, int64_t cout) {
  const float* f[kMaxRows];
  float* o[kMaxRows];
  for (int64_t b = p0; b < p1; b += kMaxRows) {
    const int64_t n = std::min(p1, b + kMaxRows) - b;
    for (int64_t r = 0; r < n; ++r) {
      f[r] = src + int64_t(src_idx[b + r]) * cin;
      o[r] = dst + int64_t(dst_idx[b + r]) * cout;
    }
    int64_t r = 0;
    for (; r + T::R <= n; r += T::R) fwd_rows<T, T::R>(f + r, o + r, w, cin, cout);
    fwd_tail<T>(f + r, o + r, w, cin, cout, n - r);
  }
}

struct MatmulJob {
  const float* x;
  const float* w;     // (S, C_in, C_out)
  const float* bias;  // (C_out,) or null
  float* out;
  int64_t cin, cout;
  bool to_tokens;
};

// One block of slot_matmul: its output rows start at the bias (or zero), then get each slot's product.
template <typename T>
VOLT_INLINE void matmul_block(const Plan& pl, const MatmulJob& j, int64_t b) {
  const auto init = [&](float* row) {
    if (j.bias != nullptr)
      std::copy(j.bias, j.bias + j.cout, row);
    else
      std::fill(row, row + j.cout, 0.f);
  };
  if (j.to_tokens) {
    for (int64_t t = pl.blocks[b]; t < pl.blocks[b + 1]; ++t) init(j.out + t * j.cout);
  } else {
    for (int64_t p = pl.begin(b, 0); p < pl.end(b, pl.num_slots - 1); ++p) init(j.out + int64_t(pl.order[p]) * j.cout);
  }
  const int32_t* src_idx = j.to_tokens ? pl.order : pl.token;
  const int32_t* dst_idx = j.to_tokens ? pl.token : pl.order;
  for (int64_t s = 0; s < pl.num_slots; ++s)
    gemm_rows<T>(j.x, src_idx, j.out, dst_idx, pl.begin(b, s), pl.end(b, s), j.w + s * j.cin * j.cout, j.cin, j.cout);
}

// One slot of slot_outer (grad zeroed by the caller): grad += a[a_idx]^T b[b_idx] over the slot's groups.
template <typename T>
VOLT_INLINE void outer_slot(const Plan& pl, const float* a, const int32_t* a_idx, const float* bm, const int32_t* b_idx,
                            int64_t ca, int64_t cb, float* grad, int64_t s) {
  for (int64_t b = 0; b < pl.num_blocks; ++b) {
    const int64_t p0 = pl.begin(b, s), p1 = pl.end(b, s);
    int64_t ci = 0;
    for (; ci + T::R <= ca; ci += T::R) wgrad_rows<T, T::R>(a, bm, a_idx, b_idx, p0, p1, ca, cb, ci, grad);
    wgrad_tail<T>(a, bm, a_idx, b_idx, p0, p1, ca, cb, ci, grad, ca - ci);
  }
}

// One entry point per instruction set, chosen once at run time.
VOLT_TILE_VARIANTS(matmul_block, (const Plan& pl, const MatmulJob& j, int64_t b), (pl, j, b))
VOLT_TILE_VARIANTS(outer_slot,
                  (const Plan& pl, const float* a, const int32_t* a_idx, const float* bm, const int32_t* b_idx,
                   int64_t ca, int64_t cb, float* grad, int64_t s),
                  (pl, a, a_idx, bm, b_idx, ca, cb, grad, s))

// Asks Linux for 2 MB pages on the 2 MB-aligned interior of a fresh, untouched allocation (THP "madvise" mode):
// a large output written in scattered rows otherwise pays a 4 KB page fault per 1 KB-or-so of rows (the
// detokenizer's 64 MB output for a 2 cm room: 14 of 27 ms measured). PyTorch does this for every large tensor
// only when THP_MEM_ALLOC_ENABLE=1; a refusal leaves ordinary pages.
void advise_huge_pages(void* data, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  const uintptr_t start = (reinterpret_cast<uintptr_t>(data) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + bytes) & ~(kHuge - 1);
  if (end > start) (void)madvise(reinterpret_cast<void*>(start), end - start, MADV_HUGEPAGE);
#else
  (void)data;
  (void)bytes;
#endif
}

void check_2d_f32(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.device().is_cpu() && t.dim() == 2 && t.scalar_type() == at::kFloat && t.is_contiguous(), name,
                    " must be a contiguous 2-D float32 CPU tensor, got ", t.sizes(), " ", t.scalar_type());
}

// Checks the plan tensors' types and sizes, and that groups (and `blocks`, when given) run from 0 to V (T) without
// going back, so every task's rows are in bounds. The order/token entries are checked by the tasks (rows_ok), each
// on the rows it is about to use.
Plan checked_plan(const at::Tensor& order, const at::Tensor& token, const at::Tensor& groups,
                  const at::Tensor* blocks, int64_t num_slots, int64_t num_voxels, int64_t num_tokens) {
  TORCH_CHECK_VALUE(order.scalar_type() == at::kInt && token.scalar_type() == at::kInt && order.dim() == 1 &&
                        token.sizes() == order.sizes() && order.is_contiguous() && token.is_contiguous() &&
                        order.device().is_cpu() && token.device().is_cpu() && order.numel() == num_voxels,
                    "order/token must be contiguous int32 CPU vectors of length V = ", num_voxels);
  TORCH_CHECK_VALUE(groups.device().is_cpu() && groups.scalar_type() == at::kLong && groups.dim() == 1 &&
                        groups.is_contiguous() && num_slots > 0 && groups.numel() > 1 &&
                        (groups.numel() - 1) % num_slots == 0,
                    "groups must be a CPU int64 vector of length B*S+1 (S = ", num_slots, ")");
  const int64_t* g = groups.data_ptr<int64_t>();
  const int64_t n = groups.numel();
  TORCH_CHECK_VALUE(g[0] == 0 && g[n - 1] == num_voxels, "groups must run from 0 to V = ", num_voxels);
  for (int64_t i = 0; i + 1 < n; ++i) TORCH_CHECK_VALUE(g[i] <= g[i + 1], "groups must be non-decreasing");
  Plan pl{order.data_ptr<int32_t>(), token.data_ptr<int32_t>(), g, nullptr, (n - 1) / num_slots, num_slots};
  if (blocks != nullptr) {
    TORCH_CHECK_VALUE(blocks->device().is_cpu() && blocks->scalar_type() == at::kLong && blocks->is_contiguous() &&
                          blocks->dim() == 1 && blocks->numel() == pl.num_blocks + 1,
                      "blocks must be a CPU int64 vector of length B+1 = ", pl.num_blocks + 1);
    const int64_t* bl = blocks->data_ptr<int64_t>();
    TORCH_CHECK_VALUE(bl[0] == 0 && bl[pl.num_blocks] == num_tokens, "blocks must run from 0 to num_tokens");
    for (int64_t b = 0; b < pl.num_blocks; ++b) TORCH_CHECK_VALUE(bl[b] <= bl[b + 1], "blocks must be non-decreasing");
    pl.blocks = bl;
  }
  return pl;
}

// Whether plan rows [p0, p1) hold voxels in [0, V) and tokens in [t0, t1): the kernels index with them.
bool rows_ok(const Plan& pl, int64_t p0, int64_t p1, int64_t num_voxels, int64_t t0, int64_t t1) {
  bool ok = true;  // no early exit, so the loop vectorizes
  for (int64_t p = p0; p < p1; ++p)
    ok &= pl.order[p] >= 0 && pl.order[p] < num_voxels && pl.token[p] >= t0 && pl.token[p] < t1;
  return ok;
}

constexpr const char* kOutOfRange = "slot plan: order/token entry out of range";

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> slot_plan_cpu(const at::Tensor& voxel2token_in,
                                                                          const at::Tensor& slot_in, int64_t num_tokens,
                                                                          int64_t num_slots) {
  TORCH_CHECK_VALUE(voxel2token_in.dim() == 1 && slot_in.sizes() == voxel2token_in.sizes() &&
                        !at::isFloatingType(voxel2token_in.scalar_type()) && !at::isFloatingType(slot_in.scalar_type()),
                    "voxel2token and slot must be integer vectors of one length");
  TORCH_CHECK_VALUE(num_tokens >= 0 && num_slots > 0, "num_tokens must be >= 0 and num_slots > 0");
  const int64_t v = voxel2token_in.numel();
  TORCH_CHECK_VALUE(v < (int64_t(1) << 31) && num_tokens < (int64_t(1) << 31), "slot plan: more than 2^31 rows");
  const at::Tensor tok = voxel2token_in.to(at::kLong).contiguous(), slot = slot_in.to(at::kLong).contiguous();
  const int64_t* pt = tok.data_ptr<int64_t>();
  const int64_t* ps = slot.data_ptr<int64_t>();
  std::vector<int64_t> per_token(num_tokens, 0);
  for (int64_t i = 0; i < v; ++i) {
    TORCH_CHECK_VALUE(pt[i] >= 0 && pt[i] < num_tokens, "voxel2token[", i, "] = ", pt[i], " is outside [0, ",
                      num_tokens, ")");
    TORCH_CHECK_VALUE(ps[i] >= 0 && ps[i] < num_slots, "slot[", i, "] = ", ps[i], " is outside [0, ", num_slots, ")");
    ++per_token[pt[i]];
  }
  // block of token t = floor(voxels in tokens < t / kBlockVoxels); blocks[b] = first token of block b
  std::vector<int64_t> block_of(num_tokens), blocks{0};
  int64_t before = 0;
  for (int64_t t = 0; t < num_tokens; ++t) {
    block_of[t] = before / kBlockVoxels;
    while (int64_t(blocks.size()) <= block_of[t]) blocks.push_back(t);
    before += per_token[t];
  }
  const int64_t num_blocks = num_tokens == 0 ? 1 : block_of[num_tokens - 1] + 1;
  blocks.resize(num_blocks);
  blocks.push_back(num_tokens);
  // counting sort by key = block * S + slot, stable in voxel index
  const int64_t keys = num_blocks * num_slots;
  at::Tensor groups = at::zeros({keys + 1}, tok.options());
  int64_t* g = groups.data_ptr<int64_t>();
  for (int64_t i = 0; i < v; ++i) ++g[block_of[pt[i]] * num_slots + ps[i] + 1];
  for (int64_t k = 0; k < keys; ++k) g[k + 1] += g[k];
  std::vector<int64_t> next(g, g + keys);
  at::Tensor order = at::empty({v}, tok.options().dtype(at::kInt));
  at::Tensor token = at::empty({v}, tok.options().dtype(at::kInt));
  int32_t* po = order.data_ptr<int32_t>();
  int32_t* pk = token.data_ptr<int32_t>();
  for (int64_t i = 0; i < v; ++i) {
    const int64_t pos = next[block_of[pt[i]] * num_slots + ps[i]]++;
    po[pos] = int32_t(i);
    pk[pos] = int32_t(pt[i]);
  }
  return {order, token, groups, at::tensor(blocks, tok.options())};
}

at::Tensor slot_matmul_cpu(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                           const at::Tensor& order, const at::Tensor& token, const at::Tensor& groups,
                           const at::Tensor& blocks, int64_t num_out, bool to_tokens) {
  check_2d_f32(x, "x");
  TORCH_CHECK_VALUE(weight.device().is_cpu() && weight.dim() == 3 && weight.scalar_type() == at::kFloat &&
                        weight.is_contiguous() && weight.size(1) == x.size(1),
                    "weight must be a contiguous float32 (S, C_in, C_out) tensor with C_in = ", x.size(1), ", got ",
                    weight.sizes());
  const int64_t cin = weight.size(1), cout = weight.size(2);
  const bool has_bias = bias.has_value() && bias->defined();
  if (has_bias)
    TORCH_CHECK_VALUE(bias->device().is_cpu() && bias->scalar_type() == at::kFloat && bias->is_contiguous() &&
                          bias->dim() == 1 && bias->size(0) == cout, "bias must be a float32 vector of length ", cout);
  const int64_t voxels = to_tokens ? x.size(0) : num_out, tokens = to_tokens ? num_out : x.size(0);
  const Plan pl = checked_plan(order, token, groups, to_tokens ? &blocks : nullptr, weight.size(0), voxels, tokens);
  at::Tensor out = at::empty({num_out, cout}, x.options());
  if (!to_tokens) advise_huge_pages(out.data_ptr(), size_t(out.numel()) * sizeof(float));
  const MatmulJob job{x.data_ptr<float>(), weight.data_ptr<float>(), has_bias ? bias->data_ptr<float>() : nullptr,
                      out.data_ptr<float>(), cin, cout, to_tokens};
  std::atomic<bool> out_of_range{false}, outside_block{false};
  run_tasks(pl.num_blocks, [&](int64_t b) {  // the block's rows are checked before anything is written through them
    const int64_t p0 = pl.begin(b, 0), p1 = pl.end(b, pl.num_slots - 1);
    if (!rows_ok(pl, p0, p1, voxels, 0, tokens)) {
      out_of_range = true;
      return;
    }
    if (to_tokens && !rows_ok(pl, p0, p1, voxels, pl.blocks[b], pl.blocks[b + 1])) {
      outside_block = true;  // another task would own this token's row
      return;
    }
    matmul_block_best(pl, job, b);
  });
  TORCH_CHECK_VALUE(!out_of_range, kOutOfRange);
  TORCH_CHECK_VALUE(!outside_block, "slot plan: a group's token lies outside its block");
  return out;
}

at::Tensor slot_outer_cpu(const at::Tensor& a, const at::Tensor& b, const at::Tensor& order, const at::Tensor& token,
                          const at::Tensor& groups, int64_t num_slots, bool a_is_token) {
  check_2d_f32(a, "a");
  check_2d_f32(b, "b");
  const int64_t ca = a.size(1), cb = b.size(1);
  const int64_t voxels = a_is_token ? b.size(0) : a.size(0), tokens = a_is_token ? a.size(0) : b.size(0);
  const Plan pl = checked_plan(order, token, groups, nullptr, num_slots, voxels, tokens);
  at::Tensor grad = at::empty({num_slots, ca, cb}, a.options());
  const float* pa = a.data_ptr<float>();
  const float* pb = b.data_ptr<float>();
  const int32_t* a_idx = a_is_token ? pl.token : pl.order;
  const int32_t* b_idx = a_is_token ? pl.order : pl.token;
  float* pr = grad.data_ptr<float>();
  std::atomic<bool> out_of_range{false};
  run_tasks(num_slots, [&](int64_t s) {  // the slot's groups are checked before they are read through
    for (int64_t b = 0; b < pl.num_blocks; ++b)
      if (!rows_ok(pl, pl.begin(b, s), pl.end(b, s), voxels, 0, tokens)) {
        out_of_range = true;
        return;
      }
    std::fill(pr + s * ca * cb, pr + (s + 1) * ca * cb, 0.f);
    outer_slot_best(pl, pa, a_idx, pb, b_idx, ca, cb, pr + s * ca * cb, s);
  });
  TORCH_CHECK_VALUE(!out_of_range, kOutOfRange);
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(volt, CPU, m) {
  m.impl("slot_plan", &slot_plan_cpu);
  m.impl("slot_matmul", &slot_matmul_cpu);
  m.impl("slot_outer", &slot_outer_cpu);
}

}  // namespace volt
