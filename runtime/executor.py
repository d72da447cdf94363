"""Running a plan: buffers for a batch size, the step loop, NCHW at the edges.

The loop is device-neutral; a backend (``cpu_backend`` here, ``cuda_backend`` in cuda.py)
provides array allocation, layout conversion and one function per kernel name.
"""

from __future__ import annotations

import time
from math import prod

import numpy as np

from .plan import Plan


class CpuBackend:
    """Runs each step with the Numba kernels of cpu.py."""

    name = "cpu"

    def __init__(self):
        import numba

        from . import cpu
        self.k = cpu
        self.threads = numba.get_num_threads()
        self._tiling = {}
        self._scratch_buf = np.empty((self.threads, 1), np.float32)

    def _scratch(self, floats: int) -> np.ndarray:
        """Per-thread scratch rows, (threads, at least ``floats``), kept and grown across
        calls: buffers allocated afresh in every call cost page faults each time."""
        if self._scratch_buf.shape[1] < floats:
            self._scratch_buf = np.empty((self.threads, floats), np.float32)
        return self._scratch_buf

    def empty(self, n: int):
        return np.empty(n, np.float32)

    def to_device(self, array):
        return array

    def to_host(self, array):
        return array

    def nchw_to_runtime(self, x: np.ndarray, out: np.ndarray):
        out[...] = x.transpose(0, 2, 3, 1) if x.ndim == 4 else x

    def runtime_to_nchw(self, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if x.ndim == 4 else x.copy()

    def synchronize(self):
        pass

    def describe(self) -> dict:
        import numba
        try:
            layer = numba.threading_layer()
        except ValueError:  # no parallel region has run yet
            layer = "not started"
        return {"threads": self.threads, "threading_layer": layer}

    def run_step(self, step, arrays, ins, res, out, work):
        k, a = self.k, step.attrs
        kernel = step.kernel
        if kernel == "conv":
            x = ins[0]
            geometry = [a[name] for name in ("kh", "kw", "sh", "sw", "ph", "pw", "dh", "dw",
                                             "groups")]
            key = (x.shape, out.shape, *geometry)
            if key not in self._tiling:
                rows, blocks = k.conv_tiling(x.shape, out.shape, a["kh"], a["kw"], a["sh"],
                                             a["sw"], a["pw"], a["groups"], self.threads)
                floats = k.conv_scratch_floats(rows, blocks, x.shape, out.shape, *geometry)
                self._tiling[key] = rows, blocks, floats
            rows, blocks, floats = self._tiling[key]
            scratch = self._scratch(floats)
            k.conv(x, arrays["w"], arrays["b"], res, out, scratch, *geometry, a["act"],
                   np.float32(a["alpha"]), rows, blocks)
        elif kernel == "dwconv":
            k.dwconv(ins[0], arrays["w"], arrays["b"], res, out, a["kh"], a["kw"],
                     a["sh"], a["sw"], a["ph"], a["pw"], a["dh"], a["dw"], a["mult"], a["act"],
                     np.float32(a["alpha"]))
        elif kernel == "convt":
            x = ins[0]
            g = a["groups"]
            kk = a["kh"] * a["kw"] * out.shape[3] // g
            cols = work[: g * prod(x.shape[:3]) * kk].reshape(g, prod(x.shape[:3]), kk)
            k.convt(x, arrays["w"], arrays["b"], res, out, cols, a["kh"], a["kw"],
                    a["sh"], a["sw"], a["ph"], a["pw"], a["dh"], a["dw"], g, a["act"],
                    np.float32(a["alpha"]))
        elif kernel == "fc":
            res2 = res.reshape(-1, out.shape[1]) if res.size else res.reshape(0, 0)
            blocks = max(1, min(8 * self.threads, out.shape[1] // 64))
            k.fc(ins[0], arrays["w"], arrays["b"], res2, out, a["act"],
                 np.float32(a["alpha"]), blocks)
        elif kernel == "maxpool":
            k.maxpool(ins[0], out, a["kh"], a["kw"], a["sh"], a["sw"], a["ph"], a["pw"], a["dh"],
                      a["dw"])
        elif kernel == "avgpool":
            k.avgpool(ins[0], out, a["kh"], a["kw"], a["sh"], a["sw"], a["ph"], a["pw"],
                      a["count_pad"])
        elif kernel in ("gap", "gmp"):
            getattr(k, kernel)(ins[0], out)
        elif kernel == "affine":
            c = out.shape[-1]
            k.affine(ins[0].reshape(-1, c), arrays["scale"], arrays["shift"],
                     out.reshape(-1, c), a["act"], np.float32(a["alpha"]))
        elif kernel == "act":
            k.act(ins[0].reshape(-1), out.reshape(-1), a["act"], np.float32(a["alpha"]))
        elif kernel == "add":
            flat = out.reshape(-1)
            last = len(ins) - 1
            k.add(ins[0].reshape(-1), ins[1].reshape(-1), flat, a["act"] if last == 1 else 0,
                  np.float32(a["alpha"]))
            for i in range(2, len(ins)):
                k.add(flat, ins[i].reshape(-1), flat, a["act"] if i == last else 0,
                      np.float32(a["alpha"]))
        elif kernel == "softmax":
            c = out.shape[-1]
            k.softmax(ins[0].reshape(-1, c), out.reshape(-1, c))
        elif kernel == "lrn":
            c = out.shape[-1]
            k.lrn(ins[0].reshape(-1, c), out.reshape(-1, c), a["size"], np.float32(a["alpha"]),
                  np.float32(a["beta"]), np.float32(a["k"]))
        elif kernel == "upsample":
            k.upsample(ins[0], out, a["sh"], a["sw"], a["bilinear"])
        elif kernel == "concat":
            c0 = 0
            for x in ins:
                x4 = x if x.ndim == 4 else x.reshape(x.shape[0], 1, 1, x.shape[1])
                o4 = out if out.ndim == 4 else out.reshape(out.shape[0], 1, 1, out.shape[1])
                k.concat(x4, o4, c0)
                c0 += x4.shape[3]
        elif kernel == "crop":
            k.crop(ins[0], out, a["oy"], a["ox"])
        elif kernel == "flatten":
            k.flatten(ins[0], out)
        else:
            raise NotImplementedError(kernel)


class Executor:
    """Holds a plan's buffers for one batch size on one backend and runs it."""

    def __init__(self, plan: Plan, backend, batch: int):
        self.plan, self.backend, self.batch = plan, backend, batch
        if hasattr(backend, "check_memory"):
            backend.check_memory(4 * (batch * plan.peak_floats + plan.weight_floats
                                      + plan.workspace_floats(batch)))
        self.arrays = [{k: backend.to_device(v) for k, v in step.arrays.items()}
                       for step in plan.steps]
        self.slots = [backend.empty(batch * size) for size in plan.slot_sizes]
        self.work = backend.empty(max(1, plan.workspace_floats(batch)))
        self.none = backend.to_device(np.empty((0, 0, 0, 0), np.float32))

    def view(self, vid: int):
        value = self.plan.values[vid]
        buf = self.slots[self.plan.root(vid).slot]
        return buf[: self.batch * value.size].reshape((self.batch, *value.shape))

    def _step_arrays(self, step):
        ins = [self.view(v) for v in step.inputs]
        res = self.view(step.residual) if step.residual is not None else self.none
        return ins, res, self.view(step.output)

    def run(self, inputs: dict[str, np.ndarray], timings: list | None = None):
        """Run on NCHW inputs (batch, C, H, W) or (batch, N); return NCHW outputs."""
        b = self.backend
        for name, vid in self.plan.inputs.items():
            b.nchw_to_runtime(inputs[name], self.view(vid))
        for step, arrays in zip(self.plan.steps, self.arrays):
            ins, res, out = self._step_arrays(step)
            if timings is None:
                b.run_step(step, arrays, ins, res, out, self.work)
            else:
                b.synchronize()
                t0 = time.perf_counter()
                b.run_step(step, arrays, ins, res, out, self.work)
                b.synchronize()
                timings.append(time.perf_counter() - t0)
        return {name: b.runtime_to_nchw(b.to_host(self.view(vid)))
                for name, vid in self.plan.outputs.items()}
