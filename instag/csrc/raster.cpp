// The inner loops of the CPU renderer: compositing one 16x16 tile (forward and backward) and the depth sort.
// Pure C++ (no torch headers) so it compiles in seconds; the OpenMP loops over tiles live in render_*.cpp.
//
// Per Gaussian, each row of its pixel box is processed as a full 16-pixel tile row, 8 pixels at a time with GCC/Clang
// vector extensions (AVX2 with -march=native, two SSE halves otherwise) and no branches: pixels outside the
// Gaussian's ellipse just get alpha < kAlphaMin. The math per pixel is the reference's (instag/render.py).
#include <algorithm>
#include <cstring>
#include <utility>
#include <vector>
#include "render_cpu.h"

namespace instag {
namespace {

typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));
constexpr int kLanes = 8;

inline v8f load(const float* p) { v8f v; std::memcpy(&v, p, sizeof(v)); return v; }
inline v8i loadi(const int32_t* p) { v8i v; std::memcpy(&v, p, sizeof(v)); return v; }
inline void store(float* p, v8f v) { std::memcpy(p, &v, sizeof(v)); }
inline void storei(int32_t* p, v8i v) { std::memcpy(p, &v, sizeof(v)); }
inline v8f splat(float x) { return v8f{} + x; }
inline float hsum(v8f v) { float s = 0; for (int i = 0; i < kLanes; ++i) s += v[i]; return s; }
inline int count(v8i mask) { int s = 0; for (int i = 0; i < kLanes; ++i) s -= mask[i]; return s; }  // true = -1

// exp(x) for x <= 0 within ~2 ulp (x clamped to [-87, 0]; exp(-87) ~ 2e-38 is far below any alpha threshold).
inline v8f exp_neg(v8f x) {
  x = x < -87.f ? splat(-87.f) : x;
  x = x > 0.f ? splat(0.f) : x;
  const v8f magic = splat(12582912.f);  // 1.5 * 2^23: adding and subtracting rounds to the nearest integer
  const v8f n = (x * 1.44269504088896341f + magic) - magic;
  const v8f r = (x - n * 0.693145751953125f) - n * 1.42860682030941723212e-6f;  // x - n ln2 in two parts
  v8f p = splat(1.f / 720.f);
  p = p * r + 1.f / 120.f;
  p = p * r + 1.f / 24.f;
  p = p * r + 1.f / 6.f;
  p = p * r + 0.5f;
  p = p * r + 1.f;
  p = p * r + 1.f;
  const v8i bits = (__builtin_convertvector(n, v8i) + 127) << 23;
  v8f scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

// Tile lists visit Gaussians in depth order, i.e. at random addresses: fetch a few ahead (a large share of the
// time went to these cache misses).
constexpr int kPrefetch = 8;
inline void prefetch(const Splat* splats, const float* channels, int D, int g) {
  const char* s = reinterpret_cast<const char*>(splats + g);
  __builtin_prefetch(s);
  __builtin_prefetch(s + sizeof(Splat) - 1);
  __builtin_prefetch(channels + (int64_t)g * D);
}

inline v8f vmin(v8f a, float b) { return a < b ? a : splat(b); }

// power = 0.5 (ca dx^2 + cc dy^2) + cb dx dy, as in the reference
inline v8f power_of(const Splat& s, v8f dx, float dy) {
  return 0.5f * (s.ca * dx * dx + s.cc * dy * dy) + s.cb * dx * dy;
}

}  // namespace

// Rasterize one tile front to back into image [H,W,D], transmittance and last contributor per pixel.
// acc holds D * 256 floats, channel-major.
void raster_tile_forward(const Camera& cam, int tile, const Splat* splats, const float* channels, int D,
                         const int32_t* offsets, const int32_t* list, float* image, float* T_out,
                         int32_t* last_out, float* acc) {
  constexpr int P = kTile * kTile;
  const int tx = tile % cam.tiles_x, ty = tile / cam.tiles_x;
  const int px0 = tx * kTile, py0 = ty * kTile;
  const int pw = std::min(kTile, cam.width - px0), ph = std::min(kTile, cam.height - py0);
  alignas(64) float T[P], live[P], w[kTile], px[kTile];
  alignas(64) int32_t last[P];
  int row_live[kTile];
  for (int y = 0; y < kTile; ++y) {
    row_live[y] = y < ph ? pw : 0;
    for (int x = 0; x < kTile; ++x) {
      T[y * kTile + x] = 1.f; last[y * kTile + x] = -1;
      live[y * kTile + x] = (y < ph && x < pw) ? 1.f : 0.f;  // pixels outside the image never take part
    }
  }
  for (int x = 0; x < kTile; ++x) px[x] = (float)(px0 + x) + 0.5f;
  std::memset(acc, 0, sizeof(float) * P * D);
  int n_live = pw * ph;
  const int end = offsets[tile + 1];
  for (int k = offsets[tile]; k < end && n_live > 0; ++k) {
    if (k + kPrefetch < end) prefetch(splats, channels, D, list[k + kPrefetch]);
    const int g = list[k];
    const Splat& s = splats[g];
    if (s.x1 < px0 || s.x0 > px0 + pw - 1) continue;
    const int ya = std::max(s.y0, py0) - py0, yb = std::min(s.y1, py0 + ph - 1) - py0;
    const float* c = channels + (int64_t)g * D;
    // the 8-pixel halves of the tile row that the pixel box touches (elsewhere alpha < kAlphaMin anyway)
    const int h0 = s.x0 - px0 >= kLanes ? kLanes : 0, h1 = s.x1 - px0 < kLanes ? kLanes : kTile;
    for (int y = ya; y <= yb; ++y) {
      if (row_live[y] == 0) continue;
      const float dy = s.my - ((float)(py0 + y) + 0.5f);
      v8i n_stop{}, n_contrib{};
      for (int h = h0; h < h1; h += kLanes) {
        const int p = y * kTile + h;
        const v8f dx = s.mx - load(px + h);
        const v8f power = power_of(s, dx, dy);
        const v8f alpha = vmin(s.opacity * exp_neg(-power), kAlphaMax);
        const v8f Tp = load(T + p), lv = load(live + p);
        const v8i valid = (power >= 0.f) & (alpha >= kAlphaMin) & (lv != 0.f);
        const v8f next_T = Tp * (1.f - alpha);
        const v8i stop = valid & (next_T < kTMin);
        const v8i contrib = valid & ~stop;
        store(w + h, contrib ? alpha * Tp : splat(0.f));
        store(T + p, contrib ? next_T : Tp);
        store(live + p, stop ? splat(0.f) : lv);
        storei(last + p, contrib ? (v8i{} + k) : loadi(last + p));
        n_stop += stop;
        n_contrib += contrib;
      }
      const int stops = count(n_stop);
      row_live[y] -= stops;
      n_live -= stops;
      if (count(n_contrib) == 0) continue;
      for (int d = 0; d < D; ++d) {
        float* ad = acc + d * P + y * kTile;
        for (int h = h0; h < h1; h += kLanes) store(ad + h, load(ad + h) + load(w + h) * c[d]);
      }
    }
  }
  for (int y = 0; y < ph; ++y)
    for (int x = 0; x < pw; ++x) {
      const int p = y * kTile + x;
      const int64_t pix = (int64_t)(py0 + y) * cam.width + (px0 + x);
      for (int d = 0; d < D; ++d) image[pix * D + d] = acc[d * P + p];
      T_out[pix] = T[p];
      last_out[pix] = last[p];
    }
}

// Back to front over one tile's list, re-deriving each pixel's transmittance by division, accumulating
// per-Gaussian gradients into this thread's buffer `grads` [N, kGradHead + D].
// Scratch: rec and dC hold D * 256 floats each (channel-major), gc 8 * D floats.
void raster_tile_backward(const Camera& cam, int tile, const Splat* splats, const float* channels, int D,
                          const int32_t* offsets, const int32_t* list, const float* T_final, const int32_t* last,
                          const float* grad_image, const float* grad_alpha, float* grads, float* rec, float* dC,
                          float* gc) {
  constexpr int P = kTile * kTile;
  const int tx = tile % cam.tiles_x, ty = tile / cam.tiles_x;
  const int px0 = tx * kTile, py0 = ty * kTile;
  const int pw = std::min(kTile, cam.width - px0), ph = std::min(kTile, cam.height - py0);
  alignas(64) float T[P], Tf[P], dA[P], px[kTile];
  alignas(64) int32_t lst[P];
  int row_last[kTile];
  const int S = kGradHead + D;
  std::memset(rec, 0, sizeof(float) * P * D);
  std::memset(dC, 0, sizeof(float) * P * D);
  int kmax = -1;
  for (int y = 0; y < kTile; ++y) {
    row_last[y] = -1;
    for (int x = 0; x < kTile; ++x) {
      const int p = y * kTile + x;
      T[p] = Tf[p] = 1.f; lst[p] = -1; dA[p] = 0.f;
      if (y >= ph || x >= pw) continue;
      const int64_t pix = (int64_t)(py0 + y) * cam.width + (px0 + x);
      T[p] = Tf[p] = T_final[pix];
      lst[p] = last[pix];
      dA[p] = grad_alpha[pix];
      for (int d = 0; d < D; ++d) dC[d * P + p] = grad_image[pix * D + d];
      row_last[y] = std::max(row_last[y], lst[p]);
    }
    kmax = std::max(kmax, row_last[y]);
  }
  for (int x = 0; x < kTile; ++x) px[x] = (float)(px0 + x) + 0.5f;
  const int begin = offsets[tile];
  for (int k = kmax; k >= begin; --k) {
    if (k - kPrefetch >= begin) prefetch(splats, channels, D, list[k - kPrefetch]);
    const int g = list[k];
    const Splat& s = splats[g];
    if (s.x1 < px0 || s.x0 > px0 + pw - 1) continue;
    const int ya = std::max(s.y0, py0) - py0, yb = std::min(s.y1, py0 + ph - 1) - py0;
    const float* c = channels + (int64_t)g * D;
    const int h0 = s.x0 - px0 >= kLanes ? kLanes : 0, h1 = s.x1 - px0 < kLanes ? kLanes : kTile;
    v8f gm0{}, gm1{}, gq0{}, gq1{}, gq2{}, go{};
    bool touched = false;
    std::memset(gc, 0, sizeof(float) * kLanes * D);
    for (int y = ya; y <= yb; ++y) {
      if (k > row_last[y]) continue;
      const float dy = s.my - ((float)(py0 + y) + 0.5f);
      for (int h = h0; h < h1; h += kLanes) {
        const int p = y * kTile + h;
        const v8f dx = s.mx - load(px + h);
        const v8f power = power_of(s, dx, dy);
        const v8f vis = exp_neg(-power);
        const v8f a = s.opacity * vis;
        const v8f alpha = vmin(a, kAlphaMax);
        const v8i valid = (loadi(lst + p) >= k) & (power >= 0.f) & (alpha >= kAlphaMin);
        if (count(valid) == 0) continue;
        touched = true;
        const v8f om = 1.f - alpha;
        const v8f Tp = load(T + p);
        const v8f Tn = valid ? Tp / om : Tp;  // transmittance in front of this Gaussian
        store(T + p, Tn);
        const v8f w = valid ? alpha * Tn : splat(0.f);
        v8f dla{};
        for (int d = 0; d < D; ++d) {
          const float cd = c[d];
          float* rd = rec + d * P + p;
          const v8f dc = load(dC + d * P + p), r = load(rd);
          store(gc + d * kLanes, load(gc + d * kLanes) + w * dc);
          dla += (cd - r) * dc;
          store(rd, valid ? alpha * cd + om * r : r);
        }
        const v8i pass = valid & (a <= kAlphaMax);  // clamped by min(): no gradient to opacity or power
        const v8f dl_dalpha = pass ? dla * Tn + load(dA + p) * load(Tf + p) / om : splat(0.f);
        go += vis * dl_dalpha;
        const v8f dl_dpower = -s.opacity * vis * dl_dalpha;
        gm0 += dl_dpower * (s.ca * dx + s.cb * dy);
        gm1 += dl_dpower * (s.cb * dx + s.cc * dy);
        gq0 += 0.5f * dl_dpower * dx * dx;
        gq1 += 0.5f * dl_dpower * dx * dy;
        gq2 += 0.5f * dl_dpower * dy * dy;
      }
    }
    if (!touched) continue;
    float* G = grads + (int64_t)g * S;
    G[0] += hsum(gm0); G[1] += hsum(gm1); G[2] += hsum(gq0); G[3] += hsum(gq1); G[4] += hsum(gq2); G[5] += hsum(go);
    for (int d = 0; d < D; ++d) G[kGradHead + d] += hsum(load(gc + d * kLanes));
  }
}

// Stable LSD radix sort of (positive float key, id) pairs by key: float bits of positive numbers sort as integers.
void radix_sort(std::vector<std::pair<float, int32_t>>& items) {
  const size_t n = items.size();
  std::vector<std::pair<float, int32_t>> tmp(n);
  std::vector<uint32_t> keys(n), keys_tmp(n);
  for (size_t i = 0; i < n; ++i) std::memcpy(&keys[i], &items[i].first, 4);
  for (int shift = 0; shift < 32; shift += 11) {
    size_t count[2049] = {0};
    for (size_t i = 0; i < n; ++i) count[((keys[i] >> shift) & 2047) + 1]++;
    for (int b = 0; b < 2048; ++b) count[b + 1] += count[b];
    for (size_t i = 0; i < n; ++i) {
      const size_t j = count[(keys[i] >> shift) & 2047]++;
      tmp[j] = items[i]; keys_tmp[j] = keys[i];
    }
    items.swap(tmp); keys.swap(keys_tmp);
  }
}

}  // namespace instag
