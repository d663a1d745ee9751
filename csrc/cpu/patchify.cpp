// CPU kernel of volt::patchify (schema in csrc/volt.cpp; semantics = volt/ops/patchify.py reference).
// Input: grid_coord (V,3) int32/int64, scene (V,) int64 in [0, num_scenes), patch_size P in [1, 2^21).
// Output: patch_coord (T,3) int32, token_scene (T,) int64, voxel2token (V,) int64, slot (V,) int64,
// cu_seqlens (num_scenes+1,) int32. Tokens are the distinct (scene, px, py, pz), p = floor(g / P),
// in lexicographic order (= torch.unique(dim=0, sorted=True)); slot = ox*P*P + oy*P + oz, o = g mod P.
// Algorithm: the four fields, each minus its minimum, are bit-packed into one key; (key << index_bits |
// index) words get a stable parallel LSD radix sort, then one pass counts tokens and one fills them.
// Keys wider than a word fall back to key/index pairs, or to one sort per 64-bit field group.
// First include: cpu/kernel_prelude.h (its floating-point pragma lets the floor loop vectorize).
#include "cpu/kernel_prelude.h"

#include <array>
#include <utility>

#include "cpu/isa.h"

namespace volt {
namespace cpu {
namespace {

using Outputs = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>;

// Fields of a voxel's token, most significant first: scene, px, py, pz (each minus its minimum).
struct TokenFields {
  int64_t lo[4] = {0, 0, 0, 0};
  int bits[4] = {0, 0, 0, 0};
  int64_t P = 1;
  double Pd = 1.0, inv = 1.0;  // P and 1/P in double
  bool fast = false;           // |grid_coord| < 2^31: patch indices via double (exact, see patch_index)
};

// floor(a / P) for |a| < 2^31, P < 2^21: a * (1/P) in double is within 2^-20 of a / P, so its floor is
// off by at most one, and the corrections (exact products of integers below 2^53) fix that.
inline double patch_index_fast(double a, const TokenFields& tf) {
  double q = floor_fast(a * tf.inv);
  q -= double(q * tf.Pd > a);
  q += double((q + 1.0) * tf.Pd <= a);
  return q;
}

inline int64_t patch_index(int64_t a, const TokenFields& tf) {
  return tf.fast ? int64_t(patch_index_fast(double(a), tf)) : floor_div(a, tf.P);
}

template <typename I>
inline void fields_of(const I* g, const int64_t* scene, int64_t i, const TokenFields& tf, uint64_t out[4]) {
  out[0] = uint64_t(scene[i] - tf.lo[0]);
  for (int a = 0; a < 3; ++a) out[a + 1] = uint64_t(patch_index(int64_t(g[3 * i + a]), tf) - tf.lo[a + 1]);
}

// Slots and keys of voxels [b, e): out[i] = key << ib | i (ib >= 0) or the key (ib < 0), none when out
// is null; hist counts the sort's lowest digit. Blocks of 16 voxels let the double arithmetic vectorize.
template <typename I>
inline __attribute__((always_inline)) void keys_and_slots_body(const I* g, const int64_t* sc, int64_t b, int64_t e,
                                                               const TokenFields& tf, uint64_t* out, int ib,
                                                               Count* hist, uint64_t mask, int64_t* slot) {
  const int s0 = tf.bits[1] + tf.bits[2] + tf.bits[3], s1 = tf.bits[2] + tf.bits[3], s2 = tf.bits[3];
  const int64_t P = tf.P;
  double lo[48];
  for (int k = 0; k < 48; ++k) lo[k] = double(tf.lo[1 + k % 3]);
  auto emit = [&](int64_t i, const int64_t p[3], const int64_t o[3]) {
    slot[i] = (o[0] * P + o[1]) * P + o[2];
    if (!out) return;  // keys wider than a word are built per field group elsewhere
    const uint64_t key = (s0 < 64 ? uint64_t(sc[i] - tf.lo[0]) << s0 : 0) |
                         (s1 < 64 ? uint64_t(p[0]) << s1 : 0) | (uint64_t(p[1]) << s2) | uint64_t(p[2]);
    out[i] = ib >= 0 ? (key << ib) | uint64_t(i) : key;
    if (hist) ++hist[key & mask];
  };
  int64_t i = b;
  if (tf.fast)
    for (; i + 16 <= e; i += 16) {
      double pd[48], od[48];
      for (int k = 0; k < 48; ++k) {
        const double a = double(g[3 * i + k]);
        const double q = patch_index_fast(a, tf);
        pd[k] = q - lo[k];
        od[k] = a - q * tf.Pd;
      }
      for (int q = 0; q < 16; ++q) {
        const int64_t p[3] = {int64_t(pd[3 * q]), int64_t(pd[3 * q + 1]), int64_t(pd[3 * q + 2])};
        const int64_t o[3] = {int64_t(od[3 * q]), int64_t(od[3 * q + 1]), int64_t(od[3 * q + 2])};
        emit(i + q, p, o);
      }
    }
  for (; i < e; ++i) {
    int64_t p[3], o[3];
    for (int a = 0; a < 3; ++a) {
      const int64_t q = patch_index(int64_t(g[3 * i + a]), tf);
      p[a] = q - tf.lo[a + 1];
      o[a] = int64_t(g[3 * i + a]) - q * P;
    }
    emit(i, p, o);
  }
}

#if VOLT_X86_DISPATCH
template <typename I>
VOLT_TARGET_AVX2 void keys_and_slots_avx2(const I* g, const int64_t* sc, int64_t b, int64_t e, const TokenFields& tf,
                                          uint64_t* out, int ib, Count* hist, uint64_t mask, int64_t* slot) {
  keys_and_slots_body(g, sc, b, e, tf, out, ib, hist, mask, slot);  // 4 doubles per instruction, not 2
}
#endif

template <typename I>
void keys_and_slots(const I* g, const int64_t* sc, int64_t b, int64_t e, const TokenFields& tf, uint64_t* out,
                    int ib, Count* hist, uint64_t mask, int64_t* slot) {
#if VOLT_X86_DISPATCH
  if (cpu_has_avx2()) return keys_and_slots_avx2(g, sc, b, e, tf, out, ib, hist, mask, slot);
#endif
  keys_and_slots_body(g, sc, b, e, tf, out, ib, hist, mask, slot);
}

// The sorted sequence: packed words, key and index arrays, or (multi-word keys) index order only.
template <typename I>
struct Sorted {
  const uint64_t* w = nullptr;  // words (ib >= 0) or keys
  const int64_t* o = nullptr;   // indices when w holds keys or nothing
  int ib = -1;
  bool fields = false;  // compare recomputed fields (keys wider than one word)
  const I* g;
  const int64_t* sc;
  const TokenFields* tf;
  int64_t idx(int64_t j) const { return ib >= 0 ? int64_t(w[j] & ((uint64_t(1) << ib) - 1)) : o[j]; }
  uint64_t key(int64_t j) const { return ib >= 0 ? w[j] >> ib : w[j]; }
  bool same(int64_t j) const {  // position j holds the same token as j - 1
    if (!fields) return key(j) == key(j - 1);
    uint64_t a[4], b[4];
    fields_of(g, sc, idx(j), *tf, a);
    fields_of(g, sc, idx(j - 1), *tf, b);
    return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3];
  }
  void token(int64_t j, uint64_t fl[4]) const {
    if (fields) return fields_of(g, sc, idx(j), *tf, fl);
    const uint64_t k = key(j);
    const int s0 = tf->bits[1] + tf->bits[2] + tf->bits[3], s1 = tf->bits[2] + tf->bits[3], s2 = tf->bits[3];
    fl[0] = s0 < 64 ? k >> s0 : 0;
    fl[1] = s1 < 64 ? (k >> s1) & ((uint64_t(1) << tf->bits[1]) - 1) : 0;
    fl[2] = (k >> s2) & ((uint64_t(1) << tf->bits[2]) - 1);
    fl[3] = k & ((uint64_t(1) << tf->bits[3]) - 1);
  }
};

template <typename I>
Outputs patchify_typed(const Tensor& grid_coord, const Tensor& scene_t, int64_t num_scenes, int64_t P) {
  const int64_t V = grid_coord.size(0);
  const I* g = grid_coord.const_data_ptr<I>();
  const int64_t* sc = scene_t.const_data_ptr<int64_t>();
  const auto opt = scene_t.options().dtype(at::kLong);
  const auto cb = chunk_bounds(V);
  const int64_t t = int64_t(cb.size()) - 1;
  // Range of the scene ids and coordinates; floor(a / P) is monotonic, so the patch-index range
  // follows from the coordinate range without dividing every voxel.
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max(), kMin = std::numeric_limits<int64_t>::min();
  std::vector<std::array<int64_t, 8>> part(t);
  for_each_chunk(cb, [&](int64_t ci, int64_t b, int64_t e) {
    int64_t lo[4] = {kMax, kMax, kMax, kMax}, hi[4] = {kMin, kMin, kMin, kMin};
    for (int64_t i = b; i < e; ++i) {
      lo[0] = std::min(lo[0], sc[i]);
      hi[0] = std::max(hi[0], sc[i]);
      for (int a = 0; a < 3; ++a) {
        lo[a + 1] = std::min<int64_t>(lo[a + 1], g[3 * i + a]);
        hi[a + 1] = std::max<int64_t>(hi[a + 1], g[3 * i + a]);
      }
    }
    for (int f = 0; f < 4; ++f) part[ci][f] = lo[f], part[ci][f + 4] = hi[f];
  });
  TokenFields tf;
  tf.P = P;
  tf.Pd = double(P);
  tf.inv = 1.0 / double(P);
  int64_t lo[4] = {kMax, kMax, kMax, kMax}, hi[4] = {kMin, kMin, kMin, kMin};
  for (const auto& r : part)
    for (int f = 0; f < 4; ++f) lo[f] = std::min(lo[f], r[f]), hi[f] = std::max(hi[f], r[f + 4]);
  if (V > 0) {
    TORCH_CHECK_VALUE(lo[0] >= 0 && hi[0] < num_scenes, "volt::patchify: scene ids must lie in [0, ", num_scenes,
                      "), got [", lo[0], ", ", hi[0], "]");
    constexpr int64_t i32min = std::numeric_limits<int32_t>::min(), i32max = std::numeric_limits<int32_t>::max();
    tf.fast = true;
    for (int f = 1; f < 4; ++f) {
      tf.fast = tf.fast && lo[f] >= i32min && hi[f] <= i32max;
      lo[f] = floor_div(lo[f], P);
      hi[f] = floor_div(hi[f], P);
      TORCH_CHECK_VALUE(lo[f] >= i32min && hi[f] <= i32max, "volt::patchify: patch coordinates must fit int32, got [",
                        lo[f], ", ", hi[f], "]");
    }
    for (int f = 0; f < 4; ++f) tf.lo[f] = lo[f], tf.bits[f] = bits_for(uint64_t(hi[f] - lo[f]) + 1);
  }
  const int key_bits = tf.bits[0] + tf.bits[1] + tf.bits[2] + tf.bits[3];
  const int ib = std::max(1, bits_for(uint64_t(V)));
  Tensor slot = at::empty({V}, opt);
  Scratch buf_a(0, V), buf_b(1, V);
  Tensor order;
  Sorted<I> sorted{nullptr, nullptr, -1, false, g, sc, &tf};
  if (key_bits <= 64) {
    // One key per voxel: words when key and index fit 64 bits, else key/index pairs.
    const bool words = key_bits + ib <= 64;
    const DigitPlan dp(key_bits);
    std::vector<Count> hist(t * dp.radix(), 0);
    for_each_chunk(cb, [&](int64_t ci, int64_t b, int64_t e) {
      keys_and_slots(g, sc, b, e, tf, buf_a.get(), words ? ib : -1, hist.data() + ci * dp.radix(),
                     uint64_t(dp.radix() - 1), slot.data_ptr<int64_t>());
    });
    if (words) {
      sorted.w = radix_sort_words(buf_a.get(), buf_b.get(), V, ib, ib + key_bits, &hist);
      sorted.ib = ib;
    } else {
      order = at::empty({V}, opt);
      sorted.w = radix_sort<uint64_t>(buf_a.get(), buf_b.get(), V, key_bits, nullptr, 0, order.data_ptr<int64_t>(),
                                      &hist);
      sorted.o = order.const_data_ptr<int64_t>();
    }
  } else {
    // Fields in 64-bit groups from the least significant (pz); a stable sort per group, lowest first.
    for_each_chunk(cb, [&](int64_t, int64_t b, int64_t e) {
      keys_and_slots<I>(g, sc, b, e, tf, nullptr, -1, nullptr, 0, slot.data_ptr<int64_t>());
    });
    for (int f = 3; f >= 0;) {
      const int last = f;
      int used = 0;
      while (f >= 0 && used + tf.bits[f] <= 64) used += tf.bits[f--];
      const int64_t* in = order.defined() ? order.const_data_ptr<int64_t>() : nullptr;
      for_each_chunk(cb, [&](int64_t, int64_t b, int64_t e) {
        uint64_t fl[4];
        for (int64_t j = b; j < e; ++j) {
          fields_of(g, sc, in ? in[j] : j, tf, fl);
          uint64_t k = 0;
          for (int q = f + 1; q <= last; ++q) k = (k << tf.bits[q]) | fl[q];
          buf_a.get()[j] = k;
        }
      });
      Tensor out = at::empty({V}, opt);
      radix_sort<uint64_t>(buf_a.get(), buf_b.get(), V, used, in, 0, out.data_ptr<int64_t>());
      order = out;
    }
    sorted.o = order.const_data_ptr<int64_t>();
    sorted.fields = true;
  }
  // Count tokens per chunk, then fill: voxel -> token, and each token's scene and patch coordinate.
  std::vector<int64_t> first_tok(t + 1, 0);
  for_each_chunk(cb, [&](int64_t ci, int64_t b, int64_t e) {
    const Sorted<I> sv = sorted;
    int64_t n_new = b == 0 && e > 0;
    for (int64_t j = std::max<int64_t>(b, 1); j < e; ++j) n_new += !sv.same(j);
    first_tok[ci + 1] = n_new;
  });
  for (int64_t ci = 0; ci < t; ++ci) first_tok[ci + 1] += first_tok[ci];
  const int64_t T = first_tok[t];
  Tensor patch_coord = at::empty({T, 3}, opt.dtype(at::kInt));
  Tensor token_scene = at::empty({T}, opt), voxel2token = at::empty({V}, opt);
  int32_t* const pc = patch_coord.data_ptr<int32_t>();
  int64_t* const ts = token_scene.data_ptr<int64_t>();
  int64_t* const v2t = voxel2token.data_ptr<int64_t>();
  for_each_chunk(cb, [&](int64_t ci, int64_t b, int64_t e) {
    const Sorted<I> sv = sorted;
    int64_t tok = first_tok[ci] - 1;
    for (int64_t j = b; j < e; ++j) {
      if (j == 0 || !sv.same(j)) {
        uint64_t fl[4];
        sv.token(j, fl);
        ts[++tok] = int64_t(fl[0]) + tf.lo[0];
        for (int a = 0; a < 3; ++a) pc[3 * tok + a] = int32_t(int64_t(fl[a + 1]) + tf.lo[a + 1]);
      }
      v2t[sv.idx(j)] = tok;
    }
  });
  // cu_seqlens[s] = number of tokens of scenes < s (tokens are sorted by scene).
  Tensor cu = at::empty({num_scenes + 1}, opt.dtype(at::kInt));
  int32_t* cup = cu.data_ptr<int32_t>();
  for (int64_t s = 0; s <= num_scenes; ++s) cup[s] = int32_t(std::lower_bound(ts, ts + T, s) - ts);
  return {patch_coord, token_scene, voxel2token, slot, cu};
}

Outputs patchify_cpu(const Tensor& grid_coord_in, const Tensor& scene_in, int64_t num_scenes, int64_t patch_size) {
  TORCH_CHECK_VALUE(grid_coord_in.dim() == 2 && grid_coord_in.size(1) == 3,
                    "volt::patchify: grid_coord must be (V, 3), got ", grid_coord_in.sizes());
  TORCH_CHECK_VALUE(grid_coord_in.scalar_type() == at::kInt || grid_coord_in.scalar_type() == at::kLong,
                    "volt::patchify: grid_coord must be int32 or int64, got ", grid_coord_in.scalar_type());
  TORCH_CHECK_VALUE(scene_in.dim() == 1 && scene_in.numel() == grid_coord_in.size(0) &&
                        scene_in.scalar_type() == at::kLong,
                    "volt::patchify: scene must be (V,) int64 scene ids");
  TORCH_CHECK_VALUE(patch_size >= 1 && patch_size < kPatchLimit, "volt::patchify: patch_size must be >= 1 and < ",
                    kPatchLimit, " (slots P^3 must fit int64), got ", patch_size);
  TORCH_CHECK_VALUE(num_scenes >= 0 && num_scenes < std::numeric_limits<int32_t>::max(),
                    "volt::patchify: bad num_scenes ", num_scenes);
  TORCH_CHECK_VALUE(grid_coord_in.size(0) < std::numeric_limits<int32_t>::max(),
                    "volt::patchify: at most 2^31 - 2 voxels per call");
  const Tensor grid_coord = grid_coord_in.contiguous(), scene = scene_in.contiguous();
  if (grid_coord.scalar_type() == at::kInt) return patchify_typed<int32_t>(grid_coord, scene, num_scenes, patch_size);
  return patchify_typed<int64_t>(grid_coord, scene, num_scenes, patch_size);
}

}  // namespace
}  // namespace cpu
}  // namespace volt

TORCH_LIBRARY_IMPL(volt, CPU, m) { m.impl("patchify", &volt::cpu::patchify_cpu); }
