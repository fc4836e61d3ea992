"""Build, cache and call the C++ CPU Gaussian renderer (`instag/csrc/*.cpp`): the `cpu` backend of `instag.render`.

The extension is compiled on first use with `torch.utils.cpp_extension.load` into `~/.cache/instag/` (or
`$INSTAG_CACHE_DIR`), keyed by a hash of the sources, the flags and the torch version, so it builds once per change.
Without a working compiler `cpu_backend_available()` is False, one notice says why, and `render` uses the
PyTorch reference instead.
"""
from __future__ import annotations
import hashlib, os, shutil, sys, sysconfig, time, warnings
from pathlib import Path
import torch
from torch import Tensor

from instag.core import notice
from instag.sh import sh_coeffs, sh_degree_of

CSRC = Path(__file__).parent / 'csrc'
SOURCES = ['render_forward.cpp', 'render_backward.cpp', 'raster.cpp']
HEADERS = ['render_cpu.h', 'render_cpu_torch.h']
# flags tried in order: the first set that compiles wins (-march=native can fail on odd toolchains)
FLAG_SETS = [['-O3', '-fopenmp', '-march=native', '-fno-math-errno'], ['-O3', '-fopenmp'], ['-O2']]

_ext = None
_error: str | None = None
# seconds after which an unreleased build lock is taken to be left by a killed build
STALE_LOCK_S = 20 * 60

def cache_dir() -> Path:
    "Where compiled extensions live: `$INSTAG_CACHE_DIR` or `~/.cache/instag`."
    return Path(os.environ.get('INSTAG_CACHE_DIR', Path.home() / '.cache' / 'instag'))

def _build(flags: list[str], verbose: bool):
    from torch.utils.cpp_extension import load
    h = hashlib.sha256()
    for name in SOURCES + HEADERS: h.update((CSRC / name).read_bytes())
    # everything that changes the compile command: processes with another Python or compiler get their own build
    h.update(' '.join(flags + [torch.__version__, sys.version, sysconfig.get_paths()['include'],
                               os.environ.get('CXX', 'c++'), os.environ.get('CFLAGS', '')]).encode())
    name = f'instag_render_cpu_{h.hexdigest()[:16]}'
    build_dir = cache_dir() / 'torch_extensions' / name
    build_dir.mkdir(parents=True, exist_ok=True)
    built = build_dir / f'{name}.so'
    lock = build_dir / 'lock'
    # a build killed midway leaves torch's lock file behind and every later process would wait on it forever;
    # no build takes anywhere near STALE_LOCK_S, so an older lock is stale
    if lock.exists() and time.time() - lock.stat().st_mtime > STALE_LOCK_S:
        notice(f'removing a stale build lock left by an interrupted build: {lock}')
        lock.unlink(missing_ok=True)
    if built.exists() and not (build_dir / 'lock').exists():  # built before: import it without asking ninja
        import importlib.machinery, importlib.util
        spec = importlib.util.spec_from_file_location(name, built, loader=importlib.machinery.ExtensionFileLoader(name, str(built)))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    ldflags = ['-fopenmp'] if '-fopenmp' in flags else []
    return load(name=name, sources=[str(CSRC / s) for s in SOURCES], extra_cflags=flags, extra_ldflags=ldflags,
                extra_include_paths=[str(CSRC)], build_directory=str(build_dir), verbose=verbose)

def load_extension(verbose: bool = False):
    "The compiled extension module, building it on first use; None (with one notice) when it cannot be built."
    global _ext, _error
    if _ext is not None or _error is not None: return _ext
    if not (shutil.which(os.environ.get('CXX', 'c++')) or shutil.which('g++')):
        _error = 'no C++ compiler found (install g++, e.g. `apt-get install g++`)'
    else:
        for flags in FLAG_SETS:
            try:
                _ext = _build(flags, verbose)
                break
            except Exception as e:  # a failed flag set: try the next, keep the last message
                _error = f'{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else e}'
        if _ext is not None: _error = None
    if _ext is None:
        warnings.warn(f'the C++ CPU renderer could not be built ({_error}); '
                      'the PyTorch reference renderer is used instead (much slower)', RuntimeWarning, stacklevel=2)
    return _ext

def cpu_backend_available() -> bool:
    "True when the C++ renderer is built (building it now if needed)."
    return load_extension() is not None

class _RenderFunction(torch.autograd.Function):
    "The whole render as one autograd node: C++ forward, hand-written C++ backward."
    @staticmethod
    def forward(ctx, means, quats, scales, opacities, colors, features, means2d_leaf, viewmat, K, width, height,
                sh_degree, consts):
        ext = load_extension()
        (image, alpha, means2d, radii, splats, channels, offsets, tiles, T_final, last) = ext.forward(
            means, quats, scales, opacities, colors, features, viewmat, K, width, height, sh_degree, *consts)
        ctx.save_for_backward(means, quats, scales, opacities, colors, features, viewmat, K, splats, channels,
                              offsets, tiles, T_final, last)
        ctx.sh_degree, ctx.consts = sh_degree, consts
        ctx.mark_non_differentiable(means2d, radii)
        return image, alpha, means2d, radii

    @staticmethod
    def backward(ctx, grad_image, grad_alpha, _grad_means2d, _grad_radii):
        (means, quats, scales, opacities, colors, features, viewmat, K, splats, channels, offsets, tiles, T_final,
         last) = ctx.saved_tensors
        g = load_extension().backward(
            means, quats, scales, opacities, colors, features, viewmat, K, ctx.sh_degree, *ctx.consts, splats,
            channels, offsets, tiles, T_final, last, grad_image.contiguous(), grad_alpha[..., 0].contiguous())
        g = [t if need else None for t, need in zip(g, ctx.needs_input_grad)]
        return (*g, None, None, None, None, None, None)

def render_cpu(gaussians, viewmat: Tensor, K: Tensor, width: int, height: int, sh_degree: int | None,
               features: Tensor | None, constants: tuple[float, float, float]):
    """The `cpu` backend: (rgb, alpha, depth, normal, features, means2d, radii) like `instag.render._render_torch`.
    `constants`: (near plane, eps2d, field-of-view clamp), passed in by `instag.render` so the two backends share them."""
    if load_extension() is None: raise RuntimeError(f'the C++ CPU renderer is not available: {_error}')
    f32 = lambda t: t.to(torch.float32).contiguous()
    means = f32(gaussians['means'])
    if means.device.type != 'cpu': raise ValueError('the cpu backend needs CPU tensors; use backend="gsplat" on CUDA')
    N = means.shape[0]
    if 'colors' in gaussians: colors, degree = f32(gaussians['colors']), -1
    else:
        colors = f32(sh_coeffs(gaussians))
        degree = sh_degree_of(colors.shape[1]) if sh_degree is None else int(sh_degree)
        if (degree + 1) ** 2 > colors.shape[1]:
            raise ValueError(f'SH degree {degree} needs {(degree + 1) ** 2} coefficients, got {colors.shape[1]}')
    feats = f32(features) if features is not None else means.new_zeros(N, 0)
    params = [gaussians['means'], gaussians['quats'], gaussians['scales'], gaussians['opacities'], colors, feats]
    track = torch.is_grad_enabled() and any(t.requires_grad for t in params)
    leaf = torch.zeros(N, 2, requires_grad=True) if track else None
    image, alpha, means2d, radii = _RenderFunction.apply(
        means, f32(gaussians['quats']), f32(gaussians['scales']), f32(gaussians['opacities']), colors, feats, leaf,
        f32(viewmat), f32(K), int(width), int(height), degree, tuple(float(c) for c in constants))
    if track:  # the leaf carries the projected means; its .grad is dL/dmeans2d after backward
        with torch.no_grad(): leaf.copy_(means2d)
        means2d = leaf
    return (image[..., :3], alpha, image[..., 3:4], image[..., 4:7], image[..., 7:] if features is not None else None,
            means2d, radii)
