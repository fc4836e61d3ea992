// CPU Gaussian splatting renderer, forward pass: projection, SH, binning, sort, rasterization (OpenMP over tiles).
// The math is that of the PyTorch reference in instag/render.py (nbs/10_render.ipynb); the tests compare them.
// Channels blended per Gaussian: rgb (3), view-space depth (1), camera-space normal (3), features (F).
#include <torch/extension.h>
#include <omp.h>
#include <algorithm>
#include <cstring>
#include <utility>
#include <vector>
#include "render_cpu_torch.h"

using namespace instag;


namespace instag {

// Forward: returns {image [H,W,D], alpha [H,W,1], means2d [N,2], radii [N] int32,
//                   splats [N,10] (opaque), channels [N,D], tile_offsets, tile_list, T_final [H,W], last [H,W]}.
std::vector<Tensor> render_forward(Tensor means, Tensor quats, Tensor scales, Tensor opacities, Tensor colors,
                                   Tensor features, Tensor viewmat, Tensor K, int64_t width, int64_t height,
                                   int64_t sh_degree, double near_plane, double eps2d, double fov_clamp) {
  const Camera cam = make_camera(viewmat, K, (int)width, (int)height, near_plane, eps2d, fov_clamp);
  const Inputs in = make_inputs(means, quats, scales, opacities, colors, features, sh_degree);
  const int N = in.N, D = in.D;
  auto fopt = torch::TensorOptions().dtype(torch::kFloat32);
  auto iopt = torch::TensorOptions().dtype(torch::kInt32);
  Tensor means2d = torch::zeros({N, 2}, fopt);
  Tensor radii = torch::zeros({N}, iopt);
  Tensor splats_t = torch::empty({N, (int64_t)(sizeof(Splat) / 4)}, fopt);
  Tensor channels_t = torch::zeros({N, D}, fopt);
  Tensor depth_t = torch::empty({N}, fopt);
  Tensor rect_t = torch::zeros({N, 4}, iopt);
  Splat* splats = reinterpret_cast<Splat*>(splats_t.data_ptr<float>());
  float* channels = channels_t.data_ptr<float>();
  float* m2d = means2d.data_ptr<float>();
  int32_t* rad = radii.data_ptr<int32_t>();
  int32_t* rect = rect_t.data_ptr<int32_t>();
  float* depth = depth_t.data_ptr<float>();
  const int nthreads = std::max(1, at::get_num_threads());

#pragma omp parallel for schedule(static) num_threads(nthreads)
  for (int g = 0; g < N; ++g) {
    Proj P;
    int32_t* r = rect + 4 * g;
    r[0] = 1; r[1] = 0; r[2] = 1; r[3] = 0;  // empty tile rectangle
    if (!project_one(cam, in.means + 3 * g, in.quats + 4 * g, in.scales + 3 * g, P)) continue;
    const float o = 1.f / (1.f + std::exp(-in.opacities[g]));
    Splat& s = splats[g];
    s.mx = P.m2d[0]; s.my = P.m2d[1];
    s.ca = P.conic[0]; s.cb = P.conic[1]; s.cc = P.conic[2];
    s.opacity = o;
    // pixels where o exp(-power) can reach kAlphaMin: power <= log(255 o), an ellipse inside this box
    const float tau = std::log(o / kAlphaMin);
    s.x0 = 1; s.x1 = 0; s.y0 = 1; s.y1 = 0;
    if (tau > 0) {
      const float ex = 1.01f * std::sqrt(2.f * tau * P.a) + 1.f, ey = 1.01f * std::sqrt(2.f * tau * P.c) + 1.f;
      s.x0 = (int)clampf(std::floor(s.mx - ex - 0.5f), 0.f, (float)cam.width);
      s.x1 = (int)clampf(std::ceil(s.mx + ex - 0.5f), -1.f, (float)cam.width - 1);
      s.y0 = (int)clampf(std::floor(s.my - ey - 0.5f), 0.f, (float)cam.height);
      s.y1 = (int)clampf(std::ceil(s.my + ey - 0.5f), -1.f, (float)cam.height - 1);
    }
    m2d[2 * g] = P.m2d[0]; m2d[2 * g + 1] = P.m2d[1];
    rad[g] = (int32_t)P.radius;
    depth[g] = P.p[2];
    if (s.x0 <= s.x1 && s.y0 <= s.y1) {  // tiles of the 3-sigma square that the alpha box touches
      const float tsz = (float)kTile;
      r[0] = std::max((int)clampf(std::floor((s.mx - P.radius) / tsz), 0.f, cam.tiles_x - 1.f), s.x0 / kTile);
      r[1] = std::min((int)clampf(std::floor((s.mx + P.radius) / tsz), 0.f, cam.tiles_x - 1.f), s.x1 / kTile);
      r[2] = std::max((int)clampf(std::floor((s.my - P.radius) / tsz), 0.f, cam.tiles_y - 1.f), s.y0 / kTile);
      r[3] = std::min((int)clampf(std::floor((s.my + P.radius) / tsz), 0.f, cam.tiles_y - 1.f), s.y1 / kTile);
    }
    // channels: rgb, depth, normal, features
    float* ch = channels + (int64_t)g * D;
    if (in.sh_degree < 0) {
      for (int i = 0; i < 3; ++i) ch[i] = in.colors[3 * g + i];
    } else {
      float dir[3], basis[9];
      view_dir(cam, in.means + 3 * g, dir);
      const int nb = sh_basis(in.sh_degree, dir[0], dir[1], dir[2], basis);
      const float* co = in.colors + (int64_t)g * in.n_coeffs * 3;
      for (int i = 0; i < 3; ++i) {
        float v = 0;
        for (int k = 0; k < nb; ++k) v += basis[k] * co[3 * k + i];
        ch[i] = std::max(v + 0.5f, 0.f);
      }
    }
    ch[3] = P.p[2];
    for (int i = 0; i < 3; ++i)
      ch[4 + i] = P.flip * (cam.W[i][0] * P.R.m[0][P.kmin] + cam.W[i][1] * P.R.m[1][P.kmin] +
                            cam.W[i][2] * P.R.m[2][P.kmin]);
    for (int f = 0; f < in.F; ++f) ch[7 + f] = in.features[(int64_t)g * in.F + f];
  }

  // bin: visible Gaussians front to back (ties by index), then a counting sort by tile keeps that order
  std::vector<std::pair<float, int32_t>> order;
  order.reserve(N);
  for (int g = 0; g < N; ++g)
    if (rect[4 * g] <= rect[4 * g + 1] && rect[4 * g + 2] <= rect[4 * g + 3]) order.emplace_back(depth[g], g);
  radix_sort(order);  // depths > near plane > 0; input in index order, so ties stay in index order
  const int n_tiles = cam.tiles_x * cam.tiles_y;
  Tensor offsets_t = torch::zeros({n_tiles + 1}, iopt);
  int32_t* offsets = offsets_t.data_ptr<int32_t>();
  for (const auto& e : order) {
    const int32_t* r = rect + 4 * e.second;
    for (int ty = r[2]; ty <= r[3]; ++ty)
      for (int tx = r[0]; tx <= r[1]; ++tx) offsets[ty * cam.tiles_x + tx + 1]++;
  }
  for (int t = 0; t < n_tiles; ++t) offsets[t + 1] += offsets[t];
  Tensor list_t = torch::empty({std::max(offsets[n_tiles], 1)}, iopt);
  int32_t* list = list_t.data_ptr<int32_t>();
  std::vector<int32_t> fill(offsets, offsets + n_tiles);
  for (const auto& e : order) {
    const int32_t* r = rect + 4 * e.second;
    for (int ty = r[2]; ty <= r[3]; ++ty)
      for (int tx = r[0]; tx <= r[1]; ++tx) list[fill[ty * cam.tiles_x + tx]++] = e.second;
  }

  Tensor image = torch::empty({height, width, D}, fopt);
  Tensor T_final = torch::empty({height, width}, fopt);
  Tensor last = torch::empty({height, width}, iopt);
  float* img = image.data_ptr<float>();
  float* Tf = T_final.data_ptr<float>();
  int32_t* lst = last.data_ptr<int32_t>();
#pragma omp parallel num_threads(nthreads)
  {
    std::vector<float> acc((size_t)kTile * kTile * D);
#pragma omp for schedule(dynamic, 1)
    for (int t = 0; t < n_tiles; ++t)
      raster_tile_forward(cam, t, splats, channels, D, offsets, list, img, Tf, lst, acc.data());
  }
  Tensor alpha = (1 - T_final).unsqueeze(-1);
  return {image, alpha, means2d, radii, splats_t, channels_t, offsets_t, list_t, T_final, last};
}

}  // namespace instag

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &instag::render_forward, "Gaussian splatting forward (CPU)");
  m.def("backward", &instag::render_backward, "Gaussian splatting backward (CPU)");
}
