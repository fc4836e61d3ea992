"""Losses: the separable SSIM against the plain 2D-window definition, values and gradients."""
import pytest
import torch
import torch.nn.functional as F

from instag.losses import SSIM_C1, SSIM_C2, gaussian_window, photometric_loss, ssim_map


def _ssim_2d(img1, img2, window=11, sigma=1.5):  # [H, W, C] float64: 3DGS's definition, one 121-tap conv per map
    a, b = (x.permute(2, 0, 1)[None] for x in (img1, img2))
    C = a.shape[1]
    w = gaussian_window(window, sigma).to(a).expand(C, 1, window, window)
    blur = lambda x: F.conv2d(x, w, padding=window // 2, groups=C)
    mu1, mu2 = blur(a), blur(b)
    var1, var2, cov = blur(a * a) - mu1 ** 2, blur(b * b) - mu2 ** 2, blur(a * b) - mu1 * mu2
    s = ((2 * mu1 * mu2 + SSIM_C1) * (2 * cov + SSIM_C2)) / ((mu1 ** 2 + mu2 ** 2 + SSIM_C1) * (var1 + var2 + SSIM_C2))
    return s[0].permute(1, 2, 0)


@pytest.mark.parametrize('window,sigma', [(11, 1.5), (7, 1.0)])
def test_separable_ssim_equals_2d_window(window, sigma):
    g = torch.Generator().manual_seed(0)
    pred = torch.rand(40, 33, 3, generator=g, dtype=torch.float64, requires_grad=True)
    target = (pred.detach() + 0.1 * torch.randn(40, 33, 3, generator=g, dtype=torch.float64)).clamp(0, 1)
    ours, ref = ssim_map(pred, target, window, sigma), _ssim_2d(pred, target, window, sigma)
    # borders included (zero padding is the same); the tolerance is the float32 rounding of the window taps, once as
    # the 1-D kernel (here) and once as the 2-D window (reference): ~1e-8, not the float64 arithmetic's ~1e-15
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-7)
    w = torch.rand(40, 33, 3, generator=g, dtype=torch.float64)
    ga, = torch.autograd.grad((ours * w).sum(), pred)
    gb, = torch.autograd.grad((ref * w).sum(), pred)
    torch.testing.assert_close(ga, gb, rtol=1e-6, atol=1e-7)


def test_ssim_batched_and_photometric_loss():
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(2, 24, 20, 3, generator=g), torch.rand(2, 24, 20, 3, generator=g)
    batched = ssim_map(x, y)
    for i in range(2): torch.testing.assert_close(batched[i], ssim_map(x[i], y[i]))
    # identical images: L1 0 and SSIM 1 everywhere -> the loss map is 0
    torch.testing.assert_close(photometric_loss(x[0], x[0]), torch.zeros(24, 20, 3), rtol=0, atol=1e-5)
    with pytest.raises(AssertionError): ssim_map(x[0], y[0, :10])
