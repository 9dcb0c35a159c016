"""What a semi-supervised step costs over a supervised one, measured side by side in one process.

``bench_semisup.py`` reports the median step time of each equal-time run, but its runs follow one another over
an hour and a VM's speed drifts by 10-20 % between them (benchmarks/RESULTS.md, issue 15), more than the cost
sought. Here every method trains ``--steps`` steps of the real loop (``training.train``: sampler, augmentation,
teacher, losses, AdamW, weight EMA; validation off) on the same data, and the methods take turns for ``--rounds``
rounds, so a drift of the machine falls on all of them alike. The semi-supervised terms count from the first step
(``pl_start=0``), which is their cost for most of a real run (the pseudo-labels start at 20 % of it).

Methods (``--methods``): ``bench_semisup``'s names (its ``method_config``), e.g. ``sup`` (labels only; with
``amp=True``, the default, the step runs under bfloat16 autocast on a CPU with native bfloat16), ``sup_f32``
(labels only, float32: ``amp=False``), ``pl`` (pseudo-labels), ``pl_f32`` (the same in float32), ``crf:1`` (labels + the gated CRF at weight 1), ``mt``
(Mean Teacher); ``sup`` must be among them. A name with ``@system`` (``sup@system``) runs that method with glibc's
own heap settings (``NAPARI_MEDSEG_HEAP=system``) instead of the training's reuse of freed memory
(``core.heap.reuse_freed_memory``), so ``--methods sup,sup@system`` measures what the reuse saves.
``--thp-compare`` runs each round twice more, in fresh processes with PyTorch's huge pages off and on
(``THP_MEM_ALLOC_ENABLE``, read once per process), and reports ``thp_ratio_<m>`` (off / on) and
``step_s_<m>_thp_0`` / ``_thp_1``; ``--in-thread`` trains in a new thread, as the Train widget's worker does.
Data: MoNuSeg's ``monuseg_local`` setting of ``bench_semisup`` (scribbles in 2 windows of 5 images), patch 256,
batch 8, 2 threads.

Last line: ``RESULT {"step_ratio_pl", "step_ratio_pl_f32", ..., "step_s_sup", "cpu_bf16", ...}``: per
method the median over rounds of (its median step time / sup's of the same round); ``step_s_<m>`` the median step
time in seconds; ``cpu_bf16`` whether this CPU trains under bfloat16 autocast with ``amp`` on.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_semisup import DATA, method_config, setting_data  # noqa: E402  (the same data, split and methods)

from napari_medseg.core.heap import ENV  # noqa: E402
from napari_medseg.models.devices import select_device  # noqa: E402
from napari_medseg.training import StepEvent, train  # noqa: E402


def compare_huge_pages(args) -> None:
    """Each round runs this benchmark twice more, one round each, in fresh processes with PyTorch's huge pages
    off and on (``THP_MEM_ALLOC_ENABLE``, which PyTorch reads once, by the time it has loaded), in alternating
    order; per method the ratio of the step times, off / on."""
    per: dict[str, dict[str, list[float]]] = {"0": {}, "1": {}}
    ratios: dict[str, list[float]] = {}
    for r in range(2 if args.quick else args.rounds):
        for thp in ("1", "0") if r % 2 == 0 else ("0", "1"):
            cmd = [sys.executable, __file__, "--methods", args.methods, "--rounds", "1", "--first-round", str(r),
                   "--steps", str(args.steps), "--threads", str(args.threads), "--data", args.data]
            cmd += ["--in-thread"] * args.in_thread + ["--quick"] * args.quick
            run = subprocess.run(cmd, env={**os.environ, "THP_MEM_ALLOC_ENABLE": thp}, capture_output=True,
                                 text=True)
            found = [ln for ln in run.stdout.splitlines() if ln.startswith("RESULT ")]
            if run.returncode or not found:
                sys.stderr.write(run.stderr[-4000:])
                raise SystemExit(f"round {r}, huge pages {thp}: the child failed (exit {run.returncode})")
            res = json.loads(found[-1].removeprefix("RESULT "))
            for k, v in res.items():
                if k.startswith("step_s_"):
                    per[thp].setdefault(k[len("step_s_"):], []).append(v)
        for m in per["1"]:
            ratios.setdefault(m, []).append(per["0"][m][-1] / per["1"][m][-1])
        print(f"round {r}: " + json.dumps({f"{m} thp {t}": per[t][m][-1] for m in per["1"] for t in "10"}), flush=True)
    out = {f"thp_ratio_{m}": round(statistics.median(v), 3) for m, v in ratios.items()}
    out.update({f"thp_ratio_{m}_rounds": [round(x, 3) for x in v] for m, v in ratios.items()})
    out.update({f"step_s_{m}_thp_{t}": round(statistics.median(per[t][m]), 4) for m in per["1"] for t in "10"})
    out.update({"rounds": len(ratios["sup"]), "steps": 12 if args.quick else args.steps, "threads": args.threads,
                "in_thread": args.in_thread, "quick": args.quick})
    print("RESULT " + json.dumps(out))


def step_times(cfg, data, warmup: int, heap: str = "", in_thread: bool = False) -> list[float]:
    """Step times (s) of one run of ``train``, after ``warmup`` steps; ``heap="system"``: glibc's own heap
    settings during the run; ``in_thread``: in a new thread, as the Train widget's worker runs it."""
    times: list[float] = []

    def run() -> None:
        times.extend(e.step_time_s for e in train(cfg, data) if isinstance(e, StepEvent))

    before = os.environ.get(ENV)
    if heap:
        os.environ[ENV] = heap
    try:
        if in_thread:
            t = threading.Thread(target=run)
            t.start()
            t.join()
        else:
            run()
    finally:
        if before is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = before
    if not times:
        raise SystemExit("the run made no steps (see its error above)")
    return times[warmup:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default="sup,pl,pl_f32", help="comma-separated names of bench_semisup's methods")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=40, help="steps per method and round (the first 8 not timed)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--in-thread", action="store_true",
                    help="train in a new thread (as the Train widget does), not in the main one")
    ap.add_argument("--quick", action="store_true", help="2 rounds of 12 steps on 128 px patches (a smoke test)")
    ap.add_argument("--thp-compare", action="store_true",
                    help="each round in two fresh processes, PyTorch's huge pages off and on (THP_MEM_ALLOC_ENABLE)")
    ap.add_argument("--first-round", type=int, default=None, help=argparse.SUPPRESS)  # the seed of a child's round
    args = ap.parse_args()
    methods = args.methods.split(",")
    if any(m.partition("@")[2] not in ("", "system") for m in methods):
        raise SystemExit("--methods: the only suffix is @system (glibc's own heap settings)")
    # an unknown name exits with the list of known ones
    changes = {m: method_config(m.partition("@")[0]) for m in methods}
    if "sup" not in methods:
        raise SystemExit("--methods: sup must be among them (every ratio is over it)")
    root = Path(args.data)
    if not (root / "monuseg_train").is_dir():
        print(f"skipped: no MoNuSeg at {root / 'monuseg_train'}")
        print("RESULT " + json.dumps({f"step_ratio_{m}": None for m in methods if m != "sup"}))
        return
    if args.thp_compare:
        compare_huge_pages(args)
        return
    torch.set_num_threads(args.threads)
    rounds, steps, warmup = (2, 12, 4) if args.quick else (args.rounds, args.steps, 8)
    first = args.first_round or 0
    rounds = 1 if args.first_round is not None else rounds
    _, _, base, sparse = setting_data("monuseg_local", root, quick=args.quick)
    data = sparse(0)
    base = base.replace(library=False, steps=steps, val_fraction=0.0, val_every=10**9, val_first=0, device="cpu",
                        threads=args.threads, pl_start=0.0, pl_full=0.0, warmup_steps=0)
    per: dict[str, list[float]] = {m: [] for m in methods}
    ratios: dict[str, list[float]] = {m: [] for m in methods if m != "sup"}
    for r in range(first, first + rounds):
        this = {}
        for m in methods if r % 2 == 0 else methods[::-1]:  # alternate the order: no method always runs first
            cfg = base.replace(**changes[m], seed=r,
                               checkpoint_dir=tempfile.mkdtemp(prefix=f"step_cost_{m.replace('@', '_')}_"))
            t = step_times(cfg, data, warmup, heap=m.partition("@")[2], in_thread=args.in_thread)
            this[m] = statistics.median(t)
            per[m] += t
        for m in ratios:
            ratios[m].append(this[m] / this["sup"])
        print(f"round {r}: " + json.dumps({m: round(v, 4) for m, v in this.items()}), flush=True)
    out = {f"step_ratio_{m}": round(statistics.median(v), 3) for m, v in ratios.items()}
    out.update({f"step_ratio_{m}_rounds": [round(x, 3) for x in v] for m, v in ratios.items()})
    out.update({f"step_s_{m}": round(statistics.median(v), 4) for m, v in per.items()})
    setup = select_device("cpu", amp=True)
    out.update({"cpu_bf16": setup.amp_dtype == torch.bfloat16, "rounds": rounds, "steps": steps,
                "threads": args.threads, "quick": args.quick, "in_thread": args.in_thread})
    print("RESULT " + json.dumps(out))


if __name__ == "__main__":
    main()
