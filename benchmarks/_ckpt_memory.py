"""Gradient checkpointing's memory saving: the 3D U-Net of the training default at a 96^3 patch, batch 1.

``measure() -> dict`` (``bench_zoo.py`` imports it) returns ``ckpt_mem_ratio``: the bytes one forward pass keeps
for the backward pass **with** ``TrainConfig(grad_checkpoint=True)`` divided by **without**, counted with
``torch.autograd.graph.saved_tensors_hooks`` (every saved storage once, parameters excluded;
``training.finetune.saved_bytes``). That is the activation memory a training step holds between its forward
and its backward pass, the honest measure on a CPU, where no allocator reports a peak; it leaves out the
recomputation's transient (one block's activations at a time during the backward pass) and the gradients.
Also returned:

- ``rss_ratio``: peak resident memory of a fresh process doing one forward + backward, minus the same
  process's resident memory before the pass (model built, input allocated), with / without, the smaller of
  two processes each (``rss=False`` skips it: four subprocesses, ~40 s). This one includes the recomputation,
  the gradients and every transient buffer. On a CPU it falls far less than ``ckpt_mem_ratio``: with 16
  channels at full resolution, one full-resolution block's transients (convolution output, norm, activation,
  oneDNN reorders: ~56 MB each at 96^3) and the backward's gradient buffers set the peak, and checkpointing
  does not remove them; what it removes (the activations held between forward and backward) is the part
  that grows with depth, width and batch.
- ``cuda_peak_ratio``: ``torch.cuda.max_memory_allocated`` with / without (minus what was allocated before the
  pass), when CUDA exists; else null.
- ``time_ratio``: the forward + backward time with / without (median of ``repeats``, alternating).
- ``grad_max_rel_diff``: max |g_ckpt - g| / max |g| over all parameters (0 expected: CPU kernels are
  deterministic and the recomputation sees the same inputs and RNG state).

Run: ``python benchmarks/_ckpt_memory.py [--size 96] [--threads 2] [--no-rss]``; prints a table and a
``RESULT {json}`` line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from napari_medseg.models.registry import build_model  # noqa: E402
from napari_medseg.training.config import DEFAULT_MODEL  # noqa: E402
from napari_medseg.training.finetune import apply_grad_checkpoint, saved_bytes  # noqa: E402

TARGET = 0.6  # issue 20: peak activation memory with checkpointing <= 0.6 x without


def _model(checkpointed: bool, device: str = "cpu") -> torch.nn.Module:
    torch.manual_seed(0)
    m = build_model(DEFAULT_MODEL.replace(spatial_dims=3)).to(device).train()
    if checkpointed:
        apply_grad_checkpoint(m)
    return m


def _step(model: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.autograd.grad(model(x).float().square().mean(), list(model.parameters())))


_CHILD = """
import resource, sys, torch
sys.path.insert(0, {root!r})
torch.set_num_threads({threads})
from benchmarks._ckpt_memory import _model, _step
m = _model({ck})
x = torch.randn(1, 1, {s}, {s}, {s})
_step(_model({ck}), torch.randn(1, 1, 32, 32, 32))  # warm up the kernels, small
import gc; gc.collect()
before = int(open('/proc/self/statm').read().split()[1]) * resource.getpagesize()
_step(m, x)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(peak - before)
"""


def _rss_delta(checkpointed: bool, size: int, threads: int) -> int | None:
    code = _CHILD.format(root=str(ROOT), threads=threads, ck=checkpointed, s=size)
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=True)
        return int(out.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, ValueError, IndexError) as e:
        print(f"rss measure failed: {e}", file=sys.stderr)
        return None


def measure(size: int = 96, threads: int = 2, repeats: int = 2, rss: bool = True) -> dict:
    """The checkpointing figures (see the module docstring); ``ckpt_mem_ratio`` is the headline."""
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = torch.randn(1, 1, size, size, size, generator=torch.Generator().manual_seed(1))
        plain, ck = _model(False), _model(True)
        b_plain, b_ck = saved_bytes(plain, x), saved_bytes(ck, x)
        times: dict[bool, list[float]] = {False: [], True: []}
        grads: dict[bool, list[torch.Tensor]] = {}
        for _ in range(repeats):
            for flag, m in ((False, plain), (True, ck)):
                t0 = time.perf_counter()
                grads[flag] = _step(m, x)
                times[flag].append(time.perf_counter() - t0)
        gmax = max(float(g.abs().max()) for g in grads[False])
        diff = max(float((a - b).abs().max()) for a, b in zip(grads[False], grads[True]))
        out = {
            "ckpt_mem_ratio": round(b_ck / b_plain, 4),
            "saved_mb_plain": round(b_plain / 2**20, 1), "saved_mb_ckpt": round(b_ck / 2**20, 1),
            "time_ratio": round(statistics.median(times[True]) / statistics.median(times[False]), 3),
            "step_s_plain": round(statistics.median(times[False]), 2),
            "grad_max_rel_diff": diff / gmax if gmax else 0.0,
            "state_dict_keys_equal": list(plain.state_dict()) == list(ck.state_dict()),
            "rss_ratio": None, "rss_mb_plain": None, "rss_mb_ckpt": None, "cuda_peak_ratio": None,
            "model": f"3D unet {list(DEFAULT_MODEL.channels)} res {DEFAULT_MODEL.num_res_units}",
            "patch": [size] * 3, "batch": 1, "threads": threads,
        }
        del plain, ck, grads
        if rss:  # alternating, the smaller of two fresh processes each (the allocator's slack varies)
            runs: dict[bool, list[int]] = {False: [], True: []}
            for _ in range(2):
                for flag in (False, True):
                    r = _rss_delta(flag, size, threads)
                    if r:
                        runs[flag].append(r)
            r0, r1 = min(runs[False], default=None), min(runs[True], default=None)
            if r0 and r1:
                out.update(rss_ratio=round(r1 / r0, 4), rss_mb_plain=round(r0 / 2**20, 1),
                           rss_mb_ckpt=round(r1 / 2**20, 1))
        if torch.cuda.is_available():
            peaks = {}
            xc = x.cuda()
            for flag in (False, True):
                m = _model(flag, "cuda")
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                _step(m, xc)
                torch.cuda.synchronize()
                peaks[flag] = torch.cuda.max_memory_allocated() - base
                del m
            out["cuda_peak_ratio"] = round(peaks[True] / peaks[False], 4)
        return out
    finally:
        torch.set_num_threads(prev)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--no-rss", action="store_true", help="skip the two subprocess RSS measurements")
    a = ap.parse_args()
    r = measure(a.size, a.threads, a.repeats, rss=not a.no_rss)
    print(f"{r['model']} at {a.size}^3, batch 1, {a.threads} threads")
    print(f"  saved for backward: {r['saved_mb_plain']} MB -> {r['saved_mb_ckpt']} MB  "
          f"ratio {r['ckpt_mem_ratio']} (target <= {TARGET})")
    if r["rss_ratio"] is not None:
        print(f"  peak RSS of the pass: {r['rss_mb_plain']} MB -> {r['rss_mb_ckpt']} MB  ratio {r['rss_ratio']}")
    if r["cuda_peak_ratio"] is not None:
        print(f"  CUDA peak allocated ratio {r['cuda_peak_ratio']}")
    print(f"  forward + backward {r['step_s_plain']} s, x{r['time_ratio']} with checkpointing; "
          f"max relative gradient difference {r['grad_max_rel_diff']:.2e}; state-dict keys equal "
          f"{r['state_dict_keys_equal']}")
    print("RESULT " + json.dumps(r))


if __name__ == "__main__":
    main()
