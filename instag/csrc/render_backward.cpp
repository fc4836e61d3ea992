// CPU Gaussian splatting renderer, backward pass: hand-written gradients of every input.
// Rasterization backward (raster.cpp) runs back to front per tile (OpenMP over tiles) into per-thread buffers;
// the projection backward (per Gaussian) recomputes the projection and applies the chain rule.
#include <torch/extension.h>
#include <omp.h>
#include <algorithm>
#include <cstring>
#include <vector>
#include "render_cpu_torch.h"

using namespace instag;

namespace {

struct Grads {
  float *means, *quats, *scales, *opacities, *colors, *features, *means2d;
};

// Chain rule from (dmean2d, dconic, dopacity, dchannels) of one Gaussian to its inputs.
void project_backward(const Camera& cam, const Inputs& in, int g, const float* G, Grads& out) {
  Proj P;
  const float* mean = in.means + 3 * g;
  if (!project_one(cam, mean, in.quats + 4 * g, in.scales + 3 * g, P)) return;
  const int D = in.D;
  const float* gch = G + kGradHead;
  // opacity: sigmoid
  const float o = 1.f / (1.f + std::exp(-in.opacities[g]));
  out.opacities[g] = G[5] * o * (1.f - o);
  float g_mean[3] = {0, 0, 0};
  // colour
  if (in.sh_degree < 0) {
    for (int i = 0; i < 3; ++i) out.colors[3 * g + i] = gch[i];
  } else {
    float dir[3], basis[9];
    const float norm = view_dir(cam, mean, dir);
    const int nb = sh_basis(in.sh_degree, dir[0], dir[1], dir[2], basis);
    const float* co = in.colors + (int64_t)g * in.n_coeffs * 3;
    float* gco = out.colors + (int64_t)g * in.n_coeffs * 3;
    float gdir[3] = {0, 0, 0};
    for (int i = 0; i < 3; ++i) {
      float v = 0;
      for (int k = 0; k < nb; ++k) v += basis[k] * co[3 * k + i];
      if (!(v + 0.5f >= 0.f)) continue;  // clamped at 0: no gradient
      for (int k = 0; k < nb; ++k) gco[3 * k + i] = basis[k] * gch[i];
      sh_dir_grad(in.sh_degree, dir[0], dir[1], dir[2], co + i, 3, gch[i], gdir);
    }
    const float dd = dir[0] * gdir[0] + dir[1] * gdir[1] + dir[2] * gdir[2];
    for (int i = 0; i < 3; ++i) g_mean[i] += (gdir[i] - dir[i] * dd) / norm;
  }
  for (int f = 0; f < in.F; ++f) out.features[(int64_t)g * in.F + f] = gch[7 + f];
  // camera-space mean: depth channel, projected mean
  const float z = P.p[2], z2 = z * z, z3 = z2 * z;
  float g_p[3] = {0, 0, gch[3]};
  out.means2d[2 * g] = G[0]; out.means2d[2 * g + 1] = G[1];
  g_p[0] += cam.fx / z * G[0];
  g_p[1] += cam.fy / z * G[1];
  g_p[2] += -cam.fx * P.p[0] / z2 * G[0] - cam.fy * P.p[1] / z2 * G[1];
  // conic = inverse of the 2D covariance: dL/dcov2 = -Q G Q
  const float Q[2][2] = {{P.conic[0], P.conic[1]}, {P.conic[1], P.conic[2]}};
  const float GQ[2][2] = {{G[2], G[3]}, {G[3], G[4]}};
  float QG[2][2], G2[2][2];
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 2; ++j) QG[i][j] = Q[i][0] * GQ[0][j] + Q[i][1] * GQ[1][j];
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 2; ++j) G2[i][j] = -(QG[i][0] * Q[0][j] + QG[i][1] * Q[1][j]);
  // cov2 = J covc J^T: dL/dcovc = J^T G2 J, dL/dJ = 2 G2 J covc
  float G2J[2][3], Gc[3][3], GJ[2][3];
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 3; ++j) G2J[i][j] = G2[i][0] * P.J[0][j] + G2[i][1] * P.J[1][j];
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) Gc[i][j] = P.J[0][i] * G2J[0][j] + P.J[1][i] * G2J[1][j];
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 3; ++j)
      GJ[i][j] = 2.f * (G2J[i][0] * P.covc[0][j] + G2J[i][1] * P.covc[1][j] + G2J[i][2] * P.covc[2][j]);
  // J = [[fx/z, 0, -fx tx/z^2], [0, fy/z, -fy ty/z^2]] with tx = z clamp(x/z)
  const float g_tx = GJ[0][2] * (-cam.fx / z2), g_ty = GJ[1][2] * (-cam.fy / z2);
  g_p[2] += GJ[0][0] * (-cam.fx / z2) + GJ[0][2] * (2.f * cam.fx * P.tx / z3) + GJ[1][1] * (-cam.fy / z2) +
            GJ[1][2] * (2.f * cam.fy * P.ty / z3);
  if (P.free_x) g_p[0] += g_tx; else g_p[2] += g_tx * P.tx / z;
  if (P.free_y) g_p[1] += g_ty; else g_p[2] += g_ty * P.ty / z;
  // camera-space mean = W mean + t
  for (int j = 0; j < 3; ++j)
    g_mean[j] += cam.W[0][j] * g_p[0] + cam.W[1][j] * g_p[1] + cam.W[2][j] * g_p[2];
  for (int j = 0; j < 3; ++j) out.means[3 * g + j] = g_mean[j];
  // covc = W cov W^T: dL/dcov = W^T Gc W
  float GcW[3][3], Gcov[3][3];
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) GcW[i][j] = Gc[i][0] * cam.W[0][j] + Gc[i][1] * cam.W[1][j] + Gc[i][2] * cam.W[2][j];
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j)
      Gcov[i][j] = cam.W[0][i] * GcW[0][j] + cam.W[1][i] * GcW[1][j] + cam.W[2][i] * GcW[2][j];
  // cov = M M^T, M = R diag(s): dL/dM = 2 Gcov M
  float GR[3][3];
  float g_s[3] = {0, 0, 0};
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) {
      const float gm = 2.f * (Gcov[i][0] * P.M[0][j] + Gcov[i][1] * P.M[1][j] + Gcov[i][2] * P.M[2][j]);
      GR[i][j] = gm * P.s[j];
      g_s[j] += gm * P.R.m[i][j];
    }
  for (int j = 0; j < 3; ++j) out.scales[3 * g + j] = g_s[j] * P.s[j];
  // normal = flip W R[:, kmin]
  for (int i = 0; i < 3; ++i)
    GR[i][P.kmin] += P.flip * (cam.W[0][i] * gch[4] + cam.W[1][i] * gch[5] + cam.W[2][i] * gch[6]);
  // R(q) of the normalised quaternion, then the normalisation
  const float w = P.qn[0], x = P.qn[1], y = P.qn[2], zq = P.qn[3];
  float gq[4];
  gq[0] = 2.f * (-zq * GR[0][1] + y * GR[0][2] + zq * GR[1][0] - x * GR[1][2] - y * GR[2][0] + x * GR[2][1]);
  gq[1] = 2.f * (y * GR[0][1] + zq * GR[0][2] + y * GR[1][0] - 2.f * x * GR[1][1] - w * GR[1][2] + zq * GR[2][0] +
                 w * GR[2][1] - 2.f * x * GR[2][2]);
  gq[2] = 2.f * (-2.f * y * GR[0][0] + x * GR[0][1] + w * GR[0][2] + x * GR[1][0] + zq * GR[1][2] - w * GR[2][0] +
                 zq * GR[2][1] - 2.f * y * GR[2][2]);
  gq[3] = 2.f * (-2.f * zq * GR[0][0] - w * GR[0][1] + x * GR[0][2] + w * GR[1][0] - 2.f * zq * GR[1][1] +
                 y * GR[1][2] + x * GR[2][0] + y * GR[2][1]);
  const float qd = P.qn[0] * gq[0] + P.qn[1] * gq[1] + P.qn[2] * gq[2] + P.qn[3] * gq[3];
  for (int i = 0; i < 4; ++i) out.quats[4 * g + i] = (gq[i] - P.qn[i] * qd) / P.qnorm;
}

}  // namespace

namespace instag {

// Backward: returns {dmeans, dquats, dscales, dopacities, dcolors, dfeatures, dmeans2d}.
std::vector<Tensor> render_backward(Tensor means, Tensor quats, Tensor scales, Tensor opacities, Tensor colors,
                                    Tensor features, Tensor viewmat, Tensor K, int64_t sh_degree, double near_plane,
                                    double eps2d, double fov_clamp, Tensor splats_t, Tensor channels_t,
                                    Tensor offsets_t, Tensor list_t, Tensor T_final, Tensor last, Tensor grad_image,
                                    Tensor grad_alpha) {
  const int height = (int)T_final.size(0), width = (int)T_final.size(1);
  const Camera cam = make_camera(viewmat, K, width, height, near_plane, eps2d, fov_clamp);
  const Inputs in = make_inputs(means, quats, scales, opacities, colors, features, sh_degree);
  const int N = in.N, D = in.D, S = kGradHead + D;
  const int nthreads = std::max(1, at::get_num_threads());
  const int n_tiles = cam.tiles_x * cam.tiles_y;
  const Splat* splats = reinterpret_cast<const Splat*>(splats_t.data_ptr<float>());
  std::vector<float> buffers((size_t)nthreads * N * S, 0.f);
#pragma omp parallel num_threads(nthreads)
  {
    const int tid = omp_get_thread_num();
    std::vector<float> rec((size_t)kTile * kTile * D), dC((size_t)kTile * kTile * D), gc((size_t)8 * D);
#pragma omp for schedule(dynamic, 1)
    for (int t = 0; t < n_tiles; ++t)
      raster_tile_backward(cam, t, splats, channels_t.data_ptr<float>(), D, offsets_t.data_ptr<int32_t>(),
                           list_t.data_ptr<int32_t>(), T_final.data_ptr<float>(), last.data_ptr<int32_t>(),
                           grad_image.data_ptr<float>(), grad_alpha.data_ptr<float>(),
                           buffers.data() + (size_t)tid * N * S, rec.data(), dC.data(), gc.data());
  }
  auto fopt = torch::TensorOptions().dtype(torch::kFloat32);
  Tensor g_means = torch::zeros({N, 3}, fopt), g_quats = torch::zeros({N, 4}, fopt);
  Tensor g_scales = torch::zeros({N, 3}, fopt), g_opac = torch::zeros({N}, fopt);
  Tensor g_colors = torch::zeros_like(colors), g_feat = torch::zeros_like(features);
  Tensor g_m2d = torch::zeros({N, 2}, fopt);
  Grads out{g_means.data_ptr<float>(), g_quats.data_ptr<float>(), g_scales.data_ptr<float>(),
            g_opac.data_ptr<float>(), g_colors.data_ptr<float>(),
            features.numel() ? g_feat.data_ptr<float>() : nullptr, g_m2d.data_ptr<float>()};
#pragma omp parallel for schedule(static) num_threads(nthreads)
  for (int g = 0; g < N; ++g) {
    float* G = buffers.data() + (size_t)g * S;
    for (int t = 1; t < nthreads; ++t) {
      const float* Gt = buffers.data() + ((size_t)t * N + g) * S;
      for (int i = 0; i < S; ++i) G[i] += Gt[i];
    }
    bool any = false;
    for (int i = 0; i < S && !any; ++i) any = G[i] != 0.f;
    if (any) project_backward(cam, in, g, G, out);
  }
  return {g_means, g_quats, g_scales, g_opac, g_colors, g_feat, g_m2d};
}

}  // namespace instag
