// Shared math of the CPU Gaussian renderer (render_forward.cpp, render_backward.cpp, raster.cpp in this folder).
// Conventions match instag/render.py (the PyTorch reference): see the notebook nbs/10_render.ipynb.
#pragma once
#include <cmath>
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

namespace instag {

constexpr int kTile = 16;                  // tile edge in pixels
constexpr float kAlphaMin = 1.0f / 255.0f; // skip fainter contributions
constexpr float kAlphaMax = 0.999f;        // alpha clamp
constexpr float kTMin = 1e-4f;             // stop a pixel before transmittance drops below this

constexpr float kShC0 = 0.28209479177387814f;
constexpr float kShC1 = 0.4886025119029199f;
constexpr float kShC2[5] = {1.0925484305920792f, -1.0925484305920792f, 0.31539156525252005f,
                            -1.0925484305920792f, 0.5462742152960396f};

// What the rasterizer needs of one projected Gaussian (40 bytes).
struct Splat {
  float mx, my;          // 2D mean in pixels (pixel centres at +0.5)
  float ca, cb, cc;      // conic: inverse 2D covariance [[ca, cb], [cb, cc]]
  float opacity;         // sigmoid(logit)
  int32_t x0, x1, y0, y1; // inclusive pixel box where alpha can reach kAlphaMin
};

struct Mat3 { float m[3][3]; };

inline Mat3 quat_to_rotmat(float w, float x, float y, float z) {
  Mat3 r;
  r.m[0][0] = 1 - 2 * (y * y + z * z); r.m[0][1] = 2 * (x * y - w * z); r.m[0][2] = 2 * (x * z + w * y);
  r.m[1][0] = 2 * (x * y + w * z); r.m[1][1] = 1 - 2 * (x * x + z * z); r.m[1][2] = 2 * (y * z - w * x);
  r.m[2][0] = 2 * (x * z - w * y); r.m[2][1] = 2 * (y * z + w * x); r.m[2][2] = 1 - 2 * (x * x + y * y);
  return r;
}

// SH basis at a unit direction, 3DGS order and signs; returns the number of basis functions used.
inline int sh_basis(int degree, float x, float y, float z, float* b) {
  b[0] = kShC0;
  if (degree < 1) return 1;
  b[1] = -kShC1 * y; b[2] = kShC1 * z; b[3] = -kShC1 * x;
  if (degree < 2) return 4;
  b[4] = kShC2[0] * x * y; b[5] = kShC2[1] * y * z; b[6] = kShC2[2] * (2 * z * z - x * x - y * y);
  b[7] = kShC2[3] * x * z; b[8] = kShC2[4] * (x * x - y * y);
  return 9;
}

// d(sum_k b_k coeff_k)/d(dir) for one colour channel given its coefficients c[k] (stride `stride`).
inline void sh_dir_grad(int degree, float x, float y, float z, const float* c, int stride, float g, float* gd) {
  if (degree < 1) return;
  gd[0] += g * (-kShC1 * c[3 * stride]);
  gd[1] += g * (-kShC1 * c[1 * stride]);
  gd[2] += g * (kShC1 * c[2 * stride]);
  if (degree < 2) return;
  float c4 = c[4 * stride], c5 = c[5 * stride], c6 = c[6 * stride], c7 = c[7 * stride], c8 = c[8 * stride];
  gd[0] += g * (kShC2[0] * y * c4 - 2 * kShC2[2] * x * c6 + kShC2[3] * z * c7 + 2 * kShC2[4] * x * c8);
  gd[1] += g * (kShC2[0] * x * c4 + kShC2[1] * z * c5 - 2 * kShC2[2] * y * c6 - 2 * kShC2[4] * y * c8);
  gd[2] += g * (kShC2[1] * y * c5 + 4 * kShC2[2] * z * c6 + kShC2[3] * x * c7);
}


struct Camera {
  float W[3][3], t[3], campos[3];
  float fx, fy, cx, cy;
  float xlo, xhi, ylo, yhi;  // clamp range of X/Z and Y/Z in the Jacobian
  float near_plane, eps2d;
  int width, height, tiles_x, tiles_y;
};

// Everything the projection of one Gaussian computes; the backward recomputes it.
struct Proj {
  float qn[4], qnorm, s[3];
  Mat3 R;               // rotation of the normalised quaternion
  float M[3][3];        // R diag(s)
  float covc[3][3];     // camera-space covariance
  float p[3];           // camera-space mean
  float tx, ty;         // clamped X, Y used in the Jacobian
  bool free_x, free_y;  // X/Z, Y/Z inside the clamp range
  float J[2][3];
  float a, b, c, det;   // 2D covariance (with eps2d) and its determinant
  float conic[3];
  float m2d[2];
  float radius;
  int kmin;             // index of the shortest axis
  float flip;           // +1 or -1: normal faces the camera
  bool visible;
};

inline bool project_one(const Camera& cam, const float* mean, const float* quat, const float* logscale, Proj& P) {
  float qn2 = quat[0] * quat[0] + quat[1] * quat[1] + quat[2] * quat[2] + quat[3] * quat[3];
  P.qnorm = std::max(std::sqrt(qn2), 1e-12f);
  for (int i = 0; i < 4; ++i) P.qn[i] = quat[i] / P.qnorm;
  P.R = quat_to_rotmat(P.qn[0], P.qn[1], P.qn[2], P.qn[3]);
  for (int i = 0; i < 3; ++i) P.s[i] = std::exp(logscale[i]);
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) P.M[i][j] = P.R.m[i][j] * P.s[j];
  float cov[3][3], WC[3][3];
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) cov[i][j] = P.M[i][0] * P.M[j][0] + P.M[i][1] * P.M[j][1] + P.M[i][2] * P.M[j][2];
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) WC[i][j] = cam.W[i][0] * cov[0][j] + cam.W[i][1] * cov[1][j] + cam.W[i][2] * cov[2][j];
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) P.covc[i][j] = WC[i][0] * cam.W[j][0] + WC[i][1] * cam.W[j][1] + WC[i][2] * cam.W[j][2];
  for (int i = 0; i < 3; ++i)
    P.p[i] = cam.W[i][0] * mean[0] + cam.W[i][1] * mean[1] + cam.W[i][2] * mean[2] + cam.t[i];
  P.visible = false;
  P.radius = 0;
  float z = P.p[2];
  if (!(z > cam.near_plane)) return false;
  float ux = P.p[0] / z, uy = P.p[1] / z;
  P.free_x = ux >= cam.xlo && ux <= cam.xhi;
  P.free_y = uy >= cam.ylo && uy <= cam.yhi;
  P.tx = z * std::min(std::max(ux, cam.xlo), cam.xhi);
  P.ty = z * std::min(std::max(uy, cam.ylo), cam.yhi);
  float z2 = z * z;
  P.J[0][0] = cam.fx / z; P.J[0][1] = 0; P.J[0][2] = -cam.fx * P.tx / z2;
  P.J[1][0] = 0; P.J[1][1] = cam.fy / z; P.J[1][2] = -cam.fy * P.ty / z2;
  float JC[2][3];
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 3; ++j) JC[i][j] = P.J[i][0] * P.covc[0][j] + P.J[i][1] * P.covc[1][j] + P.J[i][2] * P.covc[2][j];
  float c00 = JC[0][0] * P.J[0][0] + JC[0][1] * P.J[0][1] + JC[0][2] * P.J[0][2];
  float c01 = JC[0][0] * P.J[1][0] + JC[0][1] * P.J[1][1] + JC[0][2] * P.J[1][2];
  float c11 = JC[1][0] * P.J[1][0] + JC[1][1] * P.J[1][1] + JC[1][2] * P.J[1][2];
  P.a = c00 + cam.eps2d; P.b = c01; P.c = c11 + cam.eps2d;
  P.det = P.a * P.c - P.b * P.b;
  if (!(P.det > 0)) return false;
  P.conic[0] = P.c / P.det; P.conic[1] = -P.b / P.det; P.conic[2] = P.a / P.det;
  P.m2d[0] = cam.fx * P.p[0] / z + cam.cx;
  P.m2d[1] = cam.fy * P.p[1] / z + cam.cy;
  float mid = 0.5f * (P.a + P.c);
  float lam = mid + std::sqrt(std::max(mid * mid - P.det, 0.01f));
  float r = std::ceil(3.f * std::sqrt(lam));
  if (!(r > 0) || !(P.m2d[0] + r > 0) || !(P.m2d[0] - r < cam.width) || !(P.m2d[1] + r > 0) ||
      !(P.m2d[1] - r < cam.height))
    return false;
  P.radius = r;
  P.kmin = 0;
  for (int k = 1; k < 3; ++k)
    if (logscale[k] < logscale[P.kmin]) P.kmin = k;
  float n[3];
  for (int i = 0; i < 3; ++i)
    n[i] = cam.W[i][0] * P.R.m[0][P.kmin] + cam.W[i][1] * P.R.m[1][P.kmin] + cam.W[i][2] * P.R.m[2][P.kmin];
  P.flip = (n[0] * P.p[0] + n[1] * P.p[1] + n[2] * P.p[2]) > 0 ? -1.f : 1.f;
  P.visible = true;
  return true;
}

inline float clampf(float v, float lo, float hi) { return std::min(std::max(v, lo), hi); }

// Unit view direction of a Gaussian for SH; returns the norm before normalising.
inline float view_dir(const Camera& cam, const float* mean, float* d) {
  for (int i = 0; i < 3; ++i) d[i] = mean[i] - cam.campos[i];
  float n = std::max(std::sqrt(d[0] * d[0] + d[1] * d[1] + d[2] * d[2]), 1e-12f);
  for (int i = 0; i < 3; ++i) d[i] /= n;
  return n;
}

struct Inputs {
  const float *means, *quats, *scales, *opacities, *colors, *features;
  int N, n_coeffs, sh_degree, F, D;  // sh_degree < 0: colors are [N,3] RGB
};

// Kernels (raster.cpp): one tile's front-to-back compositing and its backward, and the depth sort.
void raster_tile_forward(const Camera& cam, int tile, const Splat* splats, const float* channels, int D,
                         const int32_t* offsets, const int32_t* list, float* image, float* T_out,
                         int32_t* last_out, float* acc);
void raster_tile_backward(const Camera& cam, int tile, const Splat* splats, const float* channels, int D,
                          const int32_t* offsets, const int32_t* list, const float* T_final, const int32_t* last,
                          const float* grad_image, const float* grad_alpha, float* grads, float* rec, float* dC,
                          float* gc);
void radix_sort(std::vector<std::pair<float, int32_t>>& items);

constexpr int kGradHead = 6;  // per-Gaussian gradient buffer: dmean2d (2), dconic (3: dQ00, dQ01 = dQ10, dQ11), dopacity

}  // namespace instag
