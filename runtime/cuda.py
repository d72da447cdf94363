"""CUDA kernels (numba.cuda), one per op, with the names and weight layouts of cpu.py.

Activations are NHWC float32 in device memory, in the same liveness-planned buffers; weights are
copied to the device once per plan, and only inputs and outputs cross the bus.

conv is an implicit GEMM: rows are output pixels, columns output channels, and the reduction
runs over (ky, kx, c). Each block computes a BM x BN tile from shared-memory tiles of the
(never materialised) im2col matrix and of the weights; each thread keeps a WORK x WORK register
tile. fc and the first phase of convt use the same tiling over a strided GEMM. The epilogue
(bias, residual add, activation) is fused as on the CPU. Other ops use one thread per output.

Tests run these kernels under Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1) with TILE
patched small through CNNC_CUDA_TILE, and compile them for sm_90 with ``cuda.compile_ptx``.
"""

from __future__ import annotations

import math
import os

import numpy as np

from ..compiler.diagnostics import ResourceError, error

try:
    from numba import cuda, float32
except ImportError as exc:  # numba-cuda missing
    raise ResourceError(error(f"--device cuda needs numba-cuda ({exc})",
                              hint="pip install 'cnnc[cuda]'")) from None

TILE = int(os.environ.get("CNNC_CUDA_TILE", 16))  # threads per block side
WORK = 2                                           # outputs per thread per side
BM = BN = TILE * WORK
BK = TILE
THREADS = TILE * TILE                              # threads per block of 1-D kernels

ACT_NONE, ACT_RELU, ACT_RELU6, ACT_LEAKY, ACT_SIGMOID, ACT_TANH = range(6)


@cuda.jit(device=True, inline=True)
def activate(v, act, alpha):
    if act == ACT_RELU:
        return v if v > 0 else float32(0.0)
    if act == ACT_RELU6:
        return min(max(v, float32(0.0)), float32(6.0))
    if act == ACT_LEAKY:
        return v if v > 0 else v * alpha
    if act == ACT_SIGMOID:
        return float32(1.0) / (float32(1.0) + math.exp(-v))
    if act == ACT_TANH:
        return math.tanh(v)
    return v


@cuda.jit(device=True, inline=True)
def _im2col_value(x, r, k, m, h, wd, c_in, ho, wo, kw, sh, sw, ph, pw, dh, dw, c0, cg, kdim):
    if r >= m or k >= kdim:
        return float32(0.0)
    hw = ho * wo
    n = r // hw
    rem = r - n * hw
    oy = rem // wo
    ox = rem - oy * wo
    tap = k // cg
    c = k - tap * cg
    ky = tap // kw
    kx = tap - ky * kw
    iy = oy * sh - ph + ky * dh
    ix = ox * sw - pw + kx * dw
    if iy < 0 or iy >= h or ix < 0 or ix >= wd:
        return float32(0.0)
    return x[((n * h + iy) * wd + ix) * c_in + c0 + c]


@cuda.jit(device=True, inline=True)
def _zero(acc):
    for i in range(WORK):
        for j in range(WORK):
            acc[i, j] = 0.0


@cuda.jit(device=True, inline=True)
def _multiply_tiles(a_tile, b_tile, acc, ty, tx):
    """acc (WORK x WORK registers) += this thread's rows of a_tile times its columns of
    b_tile; the caller synchronises around it."""
    for kk in range(BK):
        for i in range(WORK):
            a = a_tile[ty + i * TILE, kk]
            for j in range(WORK):
                acc[i, j] += a * b_tile[kk, tx + j * TILE]


@cuda.jit
def conv(x, w, bias, res, out, n_img, h, wd, c_in, ho, wo, c_out, kh, kw, sh, sw, ph, pw, dh,
         dw, groups, act, alpha, has_res):
    """Implicit-GEMM convolution; grid (ceil(og/BN), ceil(pixels/BM), groups)."""
    gi = cuda.blockIdx.z
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    cg = c_in // groups
    og = c_out // groups
    kdim = kh * kw * cg
    m = n_img * ho * wo
    m0 = cuda.blockIdx.y * BM
    n0 = cuda.blockIdx.x * BN
    a_tile = cuda.shared.array((BM, BK), float32)
    b_tile = cuda.shared.array((BK, BN), float32)
    acc = cuda.local.array((WORK, WORK), float32)
    _zero(acc)
    for k0 in range(0, kdim, BK):
        for i in range(WORK):
            a_tile[ty + i * TILE, tx] = _im2col_value(
                x, m0 + ty + i * TILE, k0 + tx, m, h, wd, c_in, ho, wo, kw, sh, sw, ph, pw,
                dh, dw, gi * cg, cg, kdim)
        for j in range(WORK):
            col = n0 + tx + j * TILE
            k = k0 + ty
            b_tile[ty, tx + j * TILE] = w[(gi * kdim + k) * og + col] if (
                k < kdim and col < og) else float32(0.0)
        cuda.syncthreads()
        _multiply_tiles(a_tile, b_tile, acc, ty, tx)
        cuda.syncthreads()
    for i in range(WORK):
        r = m0 + ty + i * TILE
        for j in range(WORK):
            col = n0 + tx + j * TILE
            if r < m and col < og:
                co = gi * og + col
                v = acc[i, j] + bias[co]
                if has_res:
                    v += res[r * c_out + co]
                out[r * c_out + co] = activate(v, act, alpha)


@cuda.jit
def gemm(a, a_off, sam, sak, b, b_off, sbk, sbn, c, c_off, ldc, m, n, kdim, bias, has_bias, res,
         has_res, act, alpha):
    """Tiled strided GEMM ``C[m, n] = sum_k A[m, k] B[k, n]`` with a fused epilogue;
    A[m, k] = a[a_off + m*sam + k*sak], B[k, n] = b[b_off + k*sbk + n*sbn]."""
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    m0 = cuda.blockIdx.y * BM
    n0 = cuda.blockIdx.x * BN
    a_tile = cuda.shared.array((BM, BK), float32)
    b_tile = cuda.shared.array((BK, BN), float32)
    acc = cuda.local.array((WORK, WORK), float32)
    _zero(acc)
    for k0 in range(0, kdim, BK):
        for i in range(WORK):
            r = m0 + ty + i * TILE
            k = k0 + tx
            a_tile[ty + i * TILE, tx] = a[a_off + r * sam + k * sak] if (
                r < m and k < kdim) else float32(0.0)
        for j in range(WORK):
            col = n0 + tx + j * TILE
            k = k0 + ty
            b_tile[ty, tx + j * TILE] = b[b_off + k * sbk + col * sbn] if (
                k < kdim and col < n) else float32(0.0)
        cuda.syncthreads()
        _multiply_tiles(a_tile, b_tile, acc, ty, tx)
        cuda.syncthreads()
    for i in range(WORK):
        r = m0 + ty + i * TILE
        for j in range(WORK):
            col = n0 + tx + j * TILE
            if r < m and col < n:
                v = acc[i, j]
                if has_bias:
                    v += bias[col]
                if has_res:
                    v += res[r * ldc + col]
                c[c_off + r * ldc + col] = activate(v, act, alpha)


@cuda.jit
def convt_gather(cols, bias, res, out, n_img, h, wd, ho, wo, c_out, kh, kw, sh, sw, ph, pw, dh,
                 dw, groups, act, alpha, has_res):
    """Second phase of transposed conv: each output sums the taps that reach it."""
    i = cuda.grid(1)
    total = n_img * ho * wo * c_out
    if i >= total:
        return
    co = i % c_out
    pix = i // c_out
    ox = pix % wo
    t = pix // wo
    oy = t % ho
    n = t // ho
    og = c_out // groups
    gi = co // og
    j = co - gi * og
    p = n_img * h * wd
    kk = kh * kw * og
    acc = bias[co]
    for ky in range(kh):
        ty = oy + ph - ky * dh
        if ty < 0 or ty % sh != 0:
            continue
        iy = ty // sh
        if iy >= h:
            continue
        for kx in range(kw):
            tx = ox + pw - kx * dw
            if tx < 0 or tx % sw != 0:
                continue
            ix = tx // sw
            if ix >= wd:
                continue
            acc += cols[(gi * p + (n * h + iy) * wd + ix) * kk + (ky * kw + kx) * og + j]
    if has_res:
        acc += res[i]
    out[i] = activate(acc, act, alpha)


@cuda.jit
def dwconv(x, w, bias, res, out, n_img, h, wd, ho, wo, c_out, kh, kw, sh, sw, ph, pw, dh, dw,
           mult, act, alpha, has_res):
    i = cuda.grid(1)
    if i >= n_img * ho * wo * c_out:
        return
    c = i % c_out
    pix = i // c_out
    ox = pix % wo
    t = pix // wo
    oy = t % ho
    n = t // ho
    c_in = c_out // mult
    acc = bias[c]
    for ky in range(kh):
        iy = oy * sh - ph + ky * dh
        if iy < 0 or iy >= h:
            continue
        for kx in range(kw):
            ix = ox * sw - pw + kx * dw
            if ix < 0 or ix >= wd:
                continue
            acc += x[((n * h + iy) * wd + ix) * c_in + c // mult] * w[(ky * kw + kx) * c_out + c]
    if has_res:
        acc += res[i]
    out[i] = activate(acc, act, alpha)


@cuda.jit
def maxpool(x, out, n_img, h, wd, c, ho, wo, kh, kw, sh, sw, ph, pw, dh, dw):
    i = cuda.grid(1)
    if i >= n_img * ho * wo * c:
        return
    ch = i % c
    pix = i // c
    ox = pix % wo
    t = pix // wo
    oy = t % ho
    n = t // ho
    best = float32(-math.inf)
    for ky in range(kh):
        iy = oy * sh - ph + ky * dh
        if iy < 0 or iy >= h:
            continue
        for kx in range(kw):
            ix = ox * sw - pw + kx * dw
            if ix < 0 or ix >= wd:
                continue
            v = x[((n * h + iy) * wd + ix) * c + ch]
            if v > best or v != v:
                best = v
    out[i] = best


@cuda.jit
def avgpool(x, out, n_img, h, wd, c, ho, wo, kh, kw, sh, sw, ph, pw, count_pad):
    i = cuda.grid(1)
    if i >= n_img * ho * wo * c:
        return
    ch = i % c
    pix = i // c
    ox = pix % wo
    t = pix // wo
    oy = t % ho
    n = t // ho
    y0 = oy * sh - ph
    x0 = ox * sw - pw
    y1 = min(y0 + kh, h + ph)
    x1 = min(x0 + kw, wd + pw)
    pool = (y1 - y0) * (x1 - x0)
    ya = max(y0, 0)
    yb = min(y1, h)
    xa = max(x0, 0)
    xb = min(x1, wd)
    s = float32(0.0)
    for iy in range(ya, yb):
        for ix in range(xa, xb):
            s += x[((n * h + iy) * wd + ix) * c + ch]
    div = pool if count_pad else (yb - ya) * (xb - xa)
    out[i] = s / max(div, 1)


@cuda.jit
def global_pool(x, out, n_img, hw, c, is_max):
    """gap and gmp: one thread per (sample, channel)."""
    i = cuda.grid(1)
    if i >= n_img * c:
        return
    ch = i % c
    n = i // c
    acc = float32(-math.inf) if is_max else float32(0.0)
    for p in range(hw):
        v = x[(n * hw + p) * c + ch]
        if is_max:
            if v > acc or v != v:
                acc = v
        else:
            acc += v
    out[i] = acc if is_max else acc / hw


@cuda.jit
def affine(x, scale, shift, out, size, c, act, alpha):
    i = cuda.grid(1)
    if i < size:
        ch = i % c
        out[i] = activate(x[i] * scale[ch] + shift[ch], act, alpha)


@cuda.jit
def act(x, out, size, code, alpha):
    i = cuda.grid(1)
    if i < size:
        out[i] = activate(x[i], code, alpha)


@cuda.jit
def add(a, b, out, size, code, alpha):
    i = cuda.grid(1)
    if i < size:
        out[i] = activate(a[i] + b[i], code, alpha)


@cuda.jit
def softmax(x, out, rows, c):
    r = cuda.grid(1)
    if r >= rows:
        return
    m = float32(-math.inf)
    for ch in range(c):
        m = max(m, x[r * c + ch])
    s = float32(0.0)
    for ch in range(c):
        e = math.exp(x[r * c + ch] - m)
        out[r * c + ch] = e
        s += e
    for ch in range(c):
        out[r * c + ch] /= s


@cuda.jit
def lrn(x, out, rows, c, size, alpha, beta, k):
    i = cuda.grid(1)
    if i >= rows * c:
        return
    ch = i % c
    base = i - ch
    s = float32(0.0)
    for j in range(max(0, ch - size // 2), min(c, ch + (size - 1) // 2 + 1)):
        v = x[base + j]
        s += v * v
    out[i] = x[i] / math.pow(k + alpha * s / size, beta)


@cuda.jit
def upsample(x, out, n_img, h, wd, c, ho, wo, sh, sw, bilinear):
    i = cuda.grid(1)
    if i >= n_img * ho * wo * c:
        return
    ch = i % c
    pix = i // c
    ox = pix % wo
    t = pix // wo
    oy = t % ho
    n = t // ho
    if not bilinear:
        out[i] = x[((n * h + oy // sh) * wd + ox // sw) * c + ch]
        return
    sy = max((oy + 0.5) / sh - 0.5, 0.0)
    sx = max((ox + 0.5) / sw - 0.5, 0.0)
    y0 = min(int(sy), h - 1)
    x0 = min(int(sx), wd - 1)
    y1 = min(y0 + 1, h - 1)
    x1 = min(x0 + 1, wd - 1)
    ly = float32(sy - y0)
    lx = float32(sx - x0)
    row0 = (n * h + y0) * wd
    row1 = (n * h + y1) * wd
    top = x[(row0 + x0) * c + ch] * (1 - lx) + x[(row0 + x1) * c + ch] * lx
    bot = x[(row1 + x0) * c + ch] * (1 - lx) + x[(row1 + x1) * c + ch] * lx
    out[i] = top * (1 - ly) + bot * ly


@cuda.jit
def concat(x, out, pixels, cx, c_out, c0):
    i = cuda.grid(1)
    if i < pixels * cx:
        ch = i % cx
        p = i // cx
        out[p * c_out + c0 + ch] = x[i]


@cuda.jit
def crop(x, out, n_img, h, wd, c, ho, wo, oy, ox):
    i = cuda.grid(1)
    if i >= n_img * ho * wo * c:
        return
    ch = i % c
    pix = i // c
    xx = pix % wo
    t = pix // wo
    y = t % ho
    n = t // ho
    out[i] = x[((n * h + y + oy) * wd + xx + ox) * c + ch]


@cuda.jit
def flatten(x, out, n_img, h, wd, c):
    """NHWC to (N, C*H*W) in C, H, W order."""
    i = cuda.grid(1)
    if i >= n_img * h * wd * c:
        return
    ch = i % c
    pix = i // c
    ix = pix % wd
    t = pix // wd
    iy = t % h
    n = t // h
    out[n * c * h * wd + (ch * h + iy) * wd + ix] = x[i]


def _blocks(total: int) -> int:
    return max(1, (total + THREADS - 1) // THREADS)


class CudaBackend:
    """Runs plan steps with the kernels above; buffers live on the device."""

    name = "cuda"

    def __init__(self):
        try:
            available = cuda.is_available()
        except Exception as exc:  # a broken driver raises here
            raise ResourceError(error(f"--device cuda: no usable CUDA driver ({exc})")) \
                from None
        if not available:
            raise ResourceError(error(
                "--device cuda: no usable NVIDIA GPU or driver was found",
                hint="run on the CPU (--device cpu), or install the NVIDIA driver"))
        self.dummy = cuda.to_device(np.zeros(1, np.float32))

    def check_memory(self, need: int):
        """Refuse a plan that cannot fit in the GPU's free memory, before allocating it."""
        try:
            free, _ = cuda.current_context().get_memory_info()
        except Exception:  # the simulator reports no device memory
            return
        if need > 0.9 * free:
            raise ResourceError(error(
                f"--device cuda: this run needs about {need / 2**30:.2f} GiB of GPU memory but "
                f"{free / 2**30:.2f} GiB is free", hint="use a smaller --batch"))

    def empty(self, n: int):
        return cuda.device_array(n, np.float32)

    def to_device(self, array):
        return cuda.to_device(np.ascontiguousarray(array).reshape(-1))

    def to_host(self, array):
        return array.copy_to_host()

    def nchw_to_runtime(self, x, out):
        host = x.transpose(0, 2, 3, 1) if x.ndim == 4 else x
        out.copy_to_device(np.ascontiguousarray(host, np.float32))

    def runtime_to_nchw(self, x):
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if x.ndim == 4 else x.copy()

    def synchronize(self):
        cuda.synchronize()

    def describe(self) -> dict:
        try:
            dev = cuda.get_current_device()
            return {"gpu": getattr(dev, "name", b"?").decode() if isinstance(
                getattr(dev, "name", ""), bytes) else str(getattr(dev, "name", "?"))}
        except Exception:  # the simulator has no real device
            return {}

    @staticmethod
    def _flat(a):
        return a.reshape(a.size)

    def run_step(self, step, arrays, ins, res, out, work):
        a, kernel, f = step.attrs, step.kernel, self._flat
        has_res = res.size > 0
        resf = f(res) if has_res else self.dummy
        o = f(out)
        alpha = np.float32(a.get("alpha", 0.0))
        if kernel == "conv":
            x = ins[0]
            n, h, wd, c_in = x.shape
            _, ho, wo, c_out = out.shape
            og = c_out // a["groups"]
            grid = ((og + BN - 1) // BN, (n * ho * wo + BM - 1) // BM, a["groups"])
            conv[grid, (TILE, TILE)](f(x), arrays["w"], arrays["b"], resf, o, n, h, wd, c_in,
                                     ho, wo, c_out, a["kh"], a["kw"], a["sh"], a["sw"], a["ph"],
                                     a["pw"], a["dh"], a["dw"], a["groups"], a["act"], alpha,
                                     has_res)
        elif kernel == "dwconv":
            x = ins[0]
            n, h, wd, _ = x.shape
            _, ho, wo, c_out = out.shape
            dwconv[_blocks(out.size), THREADS](f(x), arrays["w"], arrays["b"], resf, o, n, h,
                                               wd, ho, wo, c_out, a["kh"], a["kw"], a["sh"],
                                               a["sw"], a["ph"], a["pw"], a["dh"], a["dw"],
                                               a["mult"], a["act"], alpha, has_res)
        elif kernel == "convt":
            x = ins[0]
            n, h, wd, c_in = x.shape
            _, ho, wo, c_out = out.shape
            g = a["groups"]
            cg, og = c_in // g, c_out // g
            p, kk = n * h * wd, a["kh"] * a["kw"] * og
            cols = work
            for gi in range(g):
                grid = ((kk + BN - 1) // BN, (p + BM - 1) // BM)
                gemm[grid, (TILE, TILE)](f(x), gi * cg, c_in, 1, arrays["w"], gi * cg * kk, kk,
                                         1, cols, gi * p * kk, kk, p, kk, cg, self.dummy, False,
                                         self.dummy, False, ACT_NONE, np.float32(0))
            convt_gather[_blocks(out.size), THREADS](cols, arrays["b"], resf, o, n, h, wd, ho,
                                                     wo, c_out, a["kh"], a["kw"], a["sh"],
                                                     a["sw"], a["ph"], a["pw"], a["dh"],
                                                     a["dw"], g, a["act"], alpha, has_res)
        elif kernel == "fc":
            x = ins[0]
            n, n_in = x.shape
            n_out = out.shape[1]
            grid = ((n_out + BN - 1) // BN, (n + BM - 1) // BM)
            gemm[grid, (TILE, TILE)](f(x), 0, n_in, 1, arrays["w"], 0, 1, n_in, o, 0, n_out, n,
                                     n_out, n_in, arrays["b"], True, resf, has_res, a["act"],
                                     alpha)
        elif kernel in ("maxpool", "avgpool"):
            x = ins[0]
            n, h, wd, c = x.shape
            _, ho, wo, _ = out.shape
            common = (f(x), o, n, h, wd, c, ho, wo, a["kh"], a["kw"], a["sh"], a["sw"], a["ph"],
                      a["pw"])
            if kernel == "maxpool":
                maxpool[_blocks(out.size), THREADS](*common, a["dh"], a["dw"])
            else:
                avgpool[_blocks(out.size), THREADS](*common, a["count_pad"])
        elif kernel in ("gap", "gmp"):
            x = ins[0]
            n, h, wd, c = x.shape
            global_pool[_blocks(n * c), THREADS](f(x), o, n, h * wd, c, kernel == "gmp")
        elif kernel == "affine":
            c = out.shape[len(out.shape) - 1]
            affine[_blocks(out.size), THREADS](f(ins[0]), arrays["scale"], arrays["shift"], o,
                                               out.size, c, a["act"], alpha)
        elif kernel == "act":
            act[_blocks(out.size), THREADS](f(ins[0]), o, out.size, a["act"], alpha)
        elif kernel == "add":
            last = len(ins) - 1
            add[_blocks(out.size), THREADS](f(ins[0]), f(ins[1]), o, out.size,
                                            a["act"] if last == 1 else ACT_NONE, alpha)
            for i in range(2, len(ins)):
                add[_blocks(out.size), THREADS](o, f(ins[i]), o, out.size,
                                                a["act"] if i == last else ACT_NONE, alpha)
        elif kernel == "softmax":
            c = out.shape[len(out.shape) - 1]
            softmax[_blocks(out.size // c), THREADS](f(ins[0]), o, out.size // c, c)
        elif kernel == "lrn":
            c = out.shape[len(out.shape) - 1]
            lrn[_blocks(out.size), THREADS](f(ins[0]), o, out.size // c, c, a["size"],
                                            np.float32(a["alpha"]), np.float32(a["beta"]),
                                            np.float32(a["k"]))
        elif kernel == "upsample":
            x = ins[0]
            n, h, wd, c = x.shape
            _, ho, wo, _ = out.shape
            upsample[_blocks(out.size), THREADS](f(x), o, n, h, wd, c, ho, wo, a["sh"], a["sw"],
                                                 a["bilinear"])
        elif kernel == "concat":
            c_out = out.shape[len(out.shape) - 1]
            pixels = out.size // c_out
            c0 = 0
            for x in ins:
                cx = x.shape[len(x.shape) - 1]
                concat[_blocks(pixels * cx), THREADS](f(x), o, pixels, cx, c_out, c0)
                c0 += cx
        elif kernel == "crop":
            x = ins[0]
            n, h, wd, c = x.shape
            _, ho, wo, _ = out.shape
            crop[_blocks(out.size), THREADS](f(x), o, n, h, wd, c, ho, wo, a["oy"], a["ox"])
        elif kernel == "flatten":
            x = ins[0]
            n, h, wd, c = x.shape
            flatten[_blocks(x.size), THREADS](f(x), o, n, h, wd, c)
        else:
            raise NotImplementedError(kernel)
