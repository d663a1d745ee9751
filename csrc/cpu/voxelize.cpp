// CPU kernel of volt::voxelize (schema in csrc/volt.cpp; semantics = volt/ops/voxelize.py reference).
// Input: coord (N,3) float32/float64, offset (B,) int64 cumulative ends, grid_size (B,) per scene,
// seed (train-mode pick) or None. Output: grid_coord (V,3) int32, inverse (N,), count (V,),
// voxel_offset (B,), order (N,) = points sorted by (voxel, index), pick (V,) or (0,); all int64 but grid.
// Algorithm: per-scene coordinate bounds (one vectorized pass), per-scene bit-packed keys, a stable
// parallel radix sort of (key << index_bits | index) words, top digit first, then each bucket in cache
// (or an LSD sort of key/index pairs when they do not fit 64 bits), then two passes over the sorted runs.
// Results do not depend on the thread count.
// First include: cpu/kernel_prelude.h (its floating-point pragma lets the floor and min/max loops vectorize).
#include "cpu/kernel_prelude.h"

#include <ATen/Dispatch.h>

#include <cmath>
#include <optional>

#include "cpu/isa.h"
#include "cpu/radix_sort_top.h"
#include "cpu/voxel_keys.h"

namespace volt {
namespace cpu {
namespace {

using Outputs = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;

// Scene of the first point at or after position i (offsets are cumulative ends).
inline int64_t scene_at(const int64_t* off, int64_t num_scenes, int64_t i) {
  return std::upper_bound(off, off + num_scenes, i) - off;
}

// Calls f(scene, begin, end) for each non-empty piece of [b, e) inside one scene.
template <typename F>
void for_each_scene_piece(const int64_t* off, int64_t num_scenes, int64_t b, int64_t e, const F& f) {
  int64_t s = scene_at(off, num_scenes, b);
  for (int64_t i = b; i < e; ++s) {
    const int64_t end = std::min(e, off[s]);
    if (end > i) f(s, i, end);
    i = std::max(i, end);
  }
}

// Voxels whose picks' random bits are computed ahead in one loop (pick_bits, vectorized): 1 KiB of bits.
constexpr int64_t kPickBlock = 256;

// Sorted (key, point) sequence, either packed words or key and order arrays.
struct WordView {
  const uint64_t* w;
  int ib;
  uint64_t key(int64_t j) const { return w[j] >> ib; }
  int64_t idx(int64_t j) const { return int64_t(w[j] & ((uint64_t(1) << ib) - 1)); }
};
struct PairView {
  const uint64_t* k;
  const int64_t* o;
  uint64_t key(int64_t j) const { return k[j]; }
  int64_t idx(int64_t j) const { return o[j]; }
};

// Number of positions i in [i0, i1) whose key differs from position i - 1's (i0 >= 1).
template <typename View>
inline __attribute__((always_inline)) int64_t count_changes_body(const View& v, int64_t i0, int64_t i1) {
  int64_t n = 0;
  for (int64_t i = i0; i < i1; ++i) n += v.key(i) != v.key(i - 1);
  return n;
}
#if VOLT_X86_DISPATCH
template <typename View>
VOLT_TARGET_AVX2 int64_t count_changes_avx2(const View& v, int64_t i0, int64_t i1) {
  return count_changes_body(v, i0, i1);  // 64-bit compares vectorize with AVX2 only
}
#endif
template <typename View>
int64_t count_changes(const View& v, int64_t i0, int64_t i1) {
#if VOLT_X86_DISPATCH
  if (cpu_has_avx2()) return count_changes_avx2(v, i0, i1);
#endif
  return count_changes_body(v, i0, i1);
}

// From the sorted sequence to the outputs. A voxel starts where the key changes or a scene starts.
template <typename View>
Outputs runs(const View& view, bool write_order, Tensor order, const int64_t* off, int64_t B, const VoxelPlan& plan,
             int64_t n, std::optional<int64_t> seed, const at::TensorOptions& opt) {
  // write_order: order is an output the view does not hold yet (word mode with with_order).
  const auto cb = chunk_bounds(n);
  const int64_t t = int64_t(cb.size()) - 1;
  std::vector<int64_t> first_vox(t + 1, 0);
  for_each_chunk(cb, [&](int64_t ci, int64_t b, int64_t e) {
    int64_t total = 0;
    for_each_scene_piece(off, B, b, e, [&](int64_t s, int64_t i0, int64_t i1) {
      const bool first = i0 == (s ? off[s - 1] : 0);  // a scene's first point starts a voxel
      total += first + count_changes(view, i0 + first, i1);
    });
    first_vox[ci + 1] = total;
  });
  for (int64_t ci = 0; ci < t; ++ci) first_vox[ci + 1] += first_vox[ci];
  const int64_t V = first_vox[t];
  Tensor grid = at::empty({V, 3}, opt.dtype(at::kInt));
  Tensor inverse = at::empty({n}, opt), count = at::empty({V}, opt), pick = at::empty({seed ? V : 0}, opt);
  int32_t* const gr = grid.data_ptr<int32_t>();
  int64_t* const inv = inverse.data_ptr<int64_t>();
  int64_t* const cnt = count.data_ptr<int64_t>();  // holds each voxel's end position until pass B
  int64_t* const pk = pick.data_ptr<int64_t>();
  int64_t* const ord = write_order ? order.data_ptr<int64_t>() : nullptr;
  // Pass A over sorted positions: point -> voxel, order, and each voxel's end (position + 1 of its
  // last point, stored unconditionally, so the last store wins: no branch). A chunk stores ends only
  // for the voxels starting in it; the one running on from the previous chunk is ended in pass B.
  std::vector<int64_t> first_new(t, -1);  // position of each chunk's first voxel start (-1: none)
  for_each_chunk(cb, [&](int64_t ci, int64_t b, int64_t e) {
    int64_t w_chunk = first_vox[ci] - 1;
    for_each_scene_piece(off, B, b, e, [&](int64_t s, int64_t i0, int64_t i1) {
      // All in locals (a captured variable would live in memory, reloaded after every store).
      const View v = view;
      int64_t* const end = cnt;
      int64_t* const iv = inv;
      int64_t* const od = ord;
      const bool wo = write_order;
      int64_t w = w_chunk, i = i0;
      auto place = [&](int64_t j) {
        const int64_t pt = v.idx(j);
        if (wo) od[j] = pt;
        iv[pt] = w;
      };
      if (i0 != (s ? off[s - 1] : 0))  // the previous chunk's last voxel may run on into this one
        for (; i < i1 && v.key(i) == v.key(i - 1); ++i) place(i);
      if (i < i1) {  // a voxel starts here
        if (first_new[ci] < 0) first_new[ci] = i;
        end[++w] = i + 1;
        place(i++);
      }
      for (; i < i1; ++i) {
        // The inverse store goes to a random line of an 8 MiB+ array: fetch it well ahead (128 points,
        // ~150 ns here) so that the miss is over, even from DRAM, when the store comes.
        if (i + 128 < i1) __builtin_prefetch(iv + v.idx(i + 128), 1);
        w += v.key(i) != v.key(i - 1);
        end[w] = i + 1;
        place(i);
      }
      w_chunk = w;
    });
  });
  // Where the voxel running past chunk ci ends: the next voxel start in a later chunk (or n).
  std::vector<int64_t> next_new(t + 1, n);
  for (int64_t ci = t - 1; ci >= 0; --ci) next_new[ci] = first_new[ci] >= 0 ? first_new[ci] : next_new[ci + 1];
  // Pass B over voxels: ends -> counts and grid cells (decoded from the key); then the random picks
  // (two light loops keep their values in registers; the picks' random bits come first for a block of
  // kPickBlock voxels, in a loop that vectorizes).
  const uint64_t sd = seed ? uint64_t(*seed) : 0;
  for_each_chunk(cb, [&](int64_t ci, int64_t, int64_t) {
    const View vw = view;
    const int64_t v0 = first_vox[ci], v1 = first_vox[ci + 1], last_end = next_new[ci + 1];
    if (v0 == v1) return;
    int64_t* const c = cnt;
    int32_t* const gv = gr;
    int64_t start = first_new[ci], s = scene_at(off, B, start);
    for (int64_t v = v0; v < v1;) {
      while (off[s] <= start) ++s;
      const ScenePack& p = plan.scenes[s];  // the scene's voxels in this chunk: packing in registers
      const uint64_t base = plan.single_word ? p.base : 0, my = (uint64_t(1) << p.by) - 1;
      const uint64_t mz = (uint64_t(1) << p.bz) - 1;
      const int sx = p.by + p.bz, sy = p.bz;
      for (const int64_t scene_end = off[s]; v < v1 && start < scene_end; ++v) {
        const int64_t end = v + 1 < v1 ? c[v] : last_end;
        const uint64_t local = vw.key(start) - base;
        gv[3 * v] = int32_t(local >> sx);
        gv[3 * v + 1] = int32_t((local >> sy) & my);
        gv[3 * v + 2] = int32_t(local & mz);
        c[v] = end - start;
        start = end;
      }
    }
    if (!seed) return;
    int64_t* const pkv = pk;
    const uint64_t seed_bits = sd;
    start = first_new[ci];
    uint32_t r[kPickBlock];
    for (int64_t vb = v0; vb < v1; vb += kPickBlock) {
      const int64_t m = std::min(kPickBlock, v1 - vb);
      pick_bits(seed_bits, vb, m, r);
      for (int64_t q = 0; q < m; ++q) {  // = pick_offset(seed, v, n_v)
        const int64_t n_v = c[vb + q];
        pkv[vb + q] = vw.idx(start + scale_pick(r[q], n_v));
        start += n_v;
      }
    }
  });
  Tensor voxel_offset = at::empty({B}, opt);
  int64_t* vo = voxel_offset.data_ptr<int64_t>();
  for (int64_t s = 0; s < B; ++s) vo[s] = off[s] > 0 ? inv[view.idx(off[s] - 1)] + 1 : 0;
  return {grid, inverse, count, voxel_offset, order, pick};
}

template <typename T>
Outputs voxelize_typed(const Tensor& coord, const int64_t* off, int64_t B, const T* gs, std::optional<int64_t> seed,
                       bool with_order) {
  const int64_t n = coord.size(0);
  const T* c = coord.const_data_ptr<T>();
  const auto cb = chunk_bounds(n);
  const int64_t t = int64_t(cb.size()) - 1;
  constexpr T inf = std::numeric_limits<T>::infinity();
  // Per (chunk, scene) coordinate bounds. floor(x / g) is monotonic in x, so the min cell of a scene
  // is floor(min coordinate / g): no division needed in this pass.
  std::vector<T> plo(t * B * 3, inf), phi(t * B * 3, -inf);
  std::vector<char> finite(t, 1);
  for_each_chunk(cb, [&](int64_t ci, int64_t b, int64_t e) {
    for_each_scene_piece(off, B, b, e, [&](int64_t s, int64_t i0, int64_t i1) {
      bool ok = true;
      coord_bounds<T>(c + 3 * i0, i1 - i0, &plo[(ci * B + s) * 3], &phi[(ci * B + s) * 3], ok);
      if (!ok) finite[ci] = 0;
    });
  });
  if (std::find(finite.begin(), finite.end(), 0) != finite.end()) {
    int64_t i = 0;
    while (i < 3 * n && std::isfinite(c[i])) ++i;
    TORCH_CHECK_VALUE(false, "volt: coord contains NaN or Inf (first at point ", i / 3, ", scene ",
                      scene_at(off, B, i / 3), ")");
  }
  std::vector<T> lo(B * 3, inf), hi(B * 3, -inf);
  for (int64_t ci = 0; ci < t; ++ci)
    for (int64_t k = 0; k < B * 3; ++k) {
      lo[k] = std::min(lo[k], plo[ci * B * 3 + k]);
      hi[k] = std::max(hi[k], phi[ci * B * 3 + k]);
    }
  for (int64_t k = 0; k < B * 3; ++k) {  // coordinate bounds -> cell bounds
    lo[k] = std::floor(lo[k] / gs[k / 3]);
    hi[k] = std::floor(hi[k] / gs[k / 3]);
  }
  const VoxelPlan plan = make_voxel_plan<T>(lo.data(), hi.data(), off, B, gs);
  const auto opt = coord.options().dtype(at::kLong);
  // Word mode when key and index fit one 64-bit word (always, short of extreme batch extents).
  const int ib = std::max(1, bits_for(uint64_t(n)));
  const bool words = plan.single_word && plan.key_bits + ib <= 64;
  // The key pass also counts the sort's first digit: the top one in word mode, else the lowest.
  const DigitPlan dp(plan.key_bits);
  const TopPlan tp(plan.key_bits, n);
  const int64_t radix = words ? int64_t(1) << tp.top : dp.radix();
  const int hshift = words ? plan.key_bits - tp.top : 0;
  const bool fused_hist = plan.single_word && dp.passes > 0;
  std::vector<Count> hist(fused_hist ? t * radix : 0, 0);
  Scratch buf_a(0, n), buf_b(1, n);
  for_each_chunk(cb, [&](int64_t ci, int64_t b, int64_t e) {
    for_each_scene_piece(off, B, b, e, [&](int64_t s, int64_t i0, int64_t i1) {
      const KeyOut o{buf_a.get() + i0, words ? ib : -1, i0, fused_hist ? hist.data() + ci * radix : nullptr, hshift,
                     uint64_t(radix - 1)};
      scene_keys<T>(c + 3 * i0, i1 - i0, gs[s], &lo[3 * s], plan.scenes[s], plan.single_word ? plan.scenes[s].base : 0,
                    o);
    });
  });
  if (words) {
    const uint64_t* w = radix_sort_words_top(buf_a.get(), buf_b.get(), n, ib, ib + plan.key_bits, &hist);
    return runs(WordView{w, ib}, with_order, at::empty({with_order ? n : 0}, opt), off, B, plan, n, seed, opt);
  }
  Tensor order = at::empty({n}, opt);  // the pair sorts produce it anyway
  int64_t* ord = order.data_ptr<int64_t>();
  if (plan.single_word) {
    const uint64_t* k = radix_sort<uint64_t>(buf_a.get(), buf_b.get(), n, plan.key_bits, nullptr, 0, ord,
                                             fused_hist ? &hist : nullptr);
    auto out = runs(PairView{k, ord}, false, order, off, B, plan, n, seed, opt);
    if (!with_order) std::get<4>(out) = at::empty({0}, opt);
    return out;
  }
  // Batch-wide keys would overflow 64 bits: sort each scene on its own (its points are contiguous).
  for (int64_t s = 0, p0 = 0; s < B; p0 = off[s++]) {
    const ScenePack& p = plan.scenes[s];
    const int64_t m = off[s] - p0;
    uint64_t* r = radix_sort<uint64_t>(buf_a.get() + p0, buf_b.get() + p0, m, p.bx + p.by + p.bz, nullptr, p0, ord + p0);
    if (r != buf_a.get() + p0) std::copy(r, r + m, buf_a.get() + p0);
  }
  auto out = runs(PairView{buf_a.get(), ord}, false, order, off, B, plan, n, seed, opt);
  if (!with_order) std::get<4>(out) = at::empty({0}, opt);
  return out;
}

Outputs voxelize_cpu(const Tensor& coord_in, const Tensor& offset_in, const Tensor& grid_size_in,
                     std::optional<int64_t> seed, bool with_order) {
  TORCH_CHECK_VALUE(coord_in.dim() == 2 && coord_in.size(1) == 3, "volt::voxelize: coord must be (N, 3), got ",
                    coord_in.sizes());
  TORCH_CHECK_VALUE(coord_in.scalar_type() == at::kFloat || coord_in.scalar_type() == at::kDouble,
                    "volt::voxelize: coord must be float32 or float64, got ", coord_in.scalar_type());
  TORCH_CHECK_VALUE(offset_in.dim() == 1 && offset_in.scalar_type() == at::kLong,
                    "volt::voxelize: offset must be a 1-D int64 tensor");
  TORCH_CHECK_VALUE(grid_size_in.dim() == 1 && grid_size_in.numel() == offset_in.numel(),
                    "volt::voxelize: grid_size must hold one value per scene (", offset_in.numel(), "), got ",
                    grid_size_in.sizes());
  TORCH_CHECK_VALUE(coord_in.size(0) < std::numeric_limits<int32_t>::max(),
                    "volt::voxelize: at most 2^31 - 2 points per call, got ", coord_in.size(0));
  const Tensor coord = coord_in.contiguous();
  const Tensor offset = offset_in.contiguous();
  const Tensor grid_size = grid_size_in.to(coord.scalar_type()).contiguous();
  const int64_t B = offset.numel();
  const int64_t* off = offset.const_data_ptr<int64_t>();
  check_offsets(off, B, coord.size(0), "points");
  Outputs out;
  AT_DISPATCH_FLOATING_TYPES(coord.scalar_type(), "volt_voxelize_cpu", [&] {
    const scalar_t* gs = grid_size.const_data_ptr<scalar_t>();
    check_grid_sizes(gs, B);
    out = voxelize_typed<scalar_t>(coord, off, B, gs, seed, with_order);
  });
  return out;
}

}  // namespace
}  // namespace cpu
}  // namespace volt

TORCH_LIBRARY_IMPL(volt, CPU, m) { m.impl("voxelize", &volt::cpu::voxelize_cpu); }
