// Torch-facing helpers shared by render_forward.cpp and render_backward.cpp.
#pragma once
#include <torch/extension.h>
#include <vector>
#include "render_cpu.h"

namespace instag {
using torch::Tensor;

inline Camera make_camera(const Tensor& viewmat, const Tensor& K, int width, int height, double near_plane,
                   double eps2d, double fov_clamp) {
  Camera c;
  auto v = viewmat.to(torch::kFloat64).contiguous();
  auto k = K.to(torch::kFloat64).contiguous();
  const double* V = v.data_ptr<double>();
  const double* Kp = k.data_ptr<double>();
  for (int i = 0; i < 3; ++i) {
    c.t[i] = (float)V[i * 4 + 3];
    for (int j = 0; j < 3; ++j) c.W[i][j] = (float)V[i * 4 + j];
  }
  for (int j = 0; j < 3; ++j) {  // camera centre -R^T t
    double s = 0;
    for (int i = 0; i < 3; ++i) s -= (double)c.W[i][j] * (double)c.t[i];
    c.campos[j] = (float)s;
  }
  double fx = Kp[0], fy = Kp[4], cx = Kp[2], cy = Kp[5];
  c.fx = (float)fx; c.fy = (float)fy; c.cx = (float)cx; c.cy = (float)cy;
  double lx = (fov_clamp - 1) * 0.5 * width / fx, ly = (fov_clamp - 1) * 0.5 * height / fy;
  c.xlo = (float)(-cx / fx - lx); c.xhi = (float)((width - cx) / fx + lx);
  c.ylo = (float)(-cy / fy - ly); c.yhi = (float)((height - cy) / fy + ly);
  c.near_plane = (float)near_plane; c.eps2d = (float)eps2d;
  c.width = width; c.height = height;
  c.tiles_x = (width + kTile - 1) / kTile; c.tiles_y = (height + kTile - 1) / kTile;
  return c;
}

inline Inputs make_inputs(const Tensor& means, const Tensor& quats, const Tensor& scales, const Tensor& opacities,
                   const Tensor& colors, const Tensor& features, int64_t sh_degree) {
  Inputs in;
  in.means = means.data_ptr<float>(); in.quats = quats.data_ptr<float>(); in.scales = scales.data_ptr<float>();
  in.opacities = opacities.data_ptr<float>(); in.colors = colors.data_ptr<float>();
  in.features = features.numel() ? features.data_ptr<float>() : nullptr;
  in.N = (int)means.size(0); in.sh_degree = (int)sh_degree;
  in.n_coeffs = sh_degree < 0 ? 1 : (int)colors.size(1);
  in.F = (int)features.size(1); in.D = 7 + in.F;
  return in;
}

std::vector<Tensor> render_forward(Tensor means, Tensor quats, Tensor scales, Tensor opacities, Tensor colors,
                                   Tensor features, Tensor viewmat, Tensor K, int64_t width, int64_t height,
                                   int64_t sh_degree, double near_plane, double eps2d, double fov_clamp);
std::vector<Tensor> render_backward(Tensor means, Tensor quats, Tensor scales, Tensor opacities, Tensor colors,
                                    Tensor features, Tensor viewmat, Tensor K, int64_t sh_degree, double near_plane,
                                    double eps2d, double fov_clamp, Tensor splats, Tensor channels, Tensor offsets,
                                    Tensor list, Tensor T_final, Tensor last, Tensor grad_image, Tensor grad_alpha);

}  // namespace instag
