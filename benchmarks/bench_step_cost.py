"""What a semi-supervised step costs over a supervised one, measured side by side in one process.

``bench_semisup.py`` reports the median step time of each equal-time run, but its runs follow one another over
an hour and a VM's speed drifts by 10-20 % between them (benchmarks/RESULTS.md, issue 15), more than the cost
sought. Here every method trains ``--steps`` steps of the real loop (``training.train``: sampler, augmentation,
teacher, losses, AdamW, weight EMA; validation off) on the same data, and the methods take turns for ``--rounds``
rounds, so a drift of the machine falls on all of them alike. The semi-supervised terms count from the first step
(``pl_start=0``), which is their cost for most of a real run (the pseudo-labels start at 20 % of it).

Methods (``--methods``): ``bench_semisup``'s names (its ``method_config``), e.g. ``sup`` (labels only), ``pl``
(pseudo-labels, the teacher's pass in bfloat16 on a CPU with native bfloat16, ``amp=True``: the default),
``pl_f32`` (the teacher in float32, ``amp=False``), ``crf:1`` (labels + the gated CRF at weight 1), ``mt``
(Mean Teacher); ``sup`` must be among them. Data: MoNuSeg's ``monuseg_local`` setting of
``bench_semisup`` (scribbles in 2 windows of 5 images), patch 256, batch 8, 2 threads.

Last line: ``RESULT {"step_ratio_pl", "step_ratio_pl_f32", ..., "step_s_sup", "bf16_teacher", ...}``: per
method the median over rounds of (its median step time / sup's of the same round); ``step_s_<m>`` the median step
time in seconds; ``bf16_teacher`` whether this CPU runs the teacher in bfloat16.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_semisup import DATA, method_config, setting_data  # noqa: E402  (the same data, split and methods)

from napari_medseg.models.devices import select_device  # noqa: E402
from napari_medseg.training import StepEvent, train  # noqa: E402


def step_times(cfg, data, warmup: int) -> list[float]:
    """Step times (s) of one run of ``train``, after ``warmup`` steps."""
    times = [e.step_time_s for e in train(cfg, data) if isinstance(e, StepEvent)]
    return times[warmup:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default="sup,pl,pl_f32", help="comma-separated names of bench_semisup's methods")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=40, help="steps per method and round (the first 8 not timed)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--quick", action="store_true", help="2 rounds of 12 steps on 128 px patches (a smoke test)")
    args = ap.parse_args()
    methods = args.methods.split(",")
    changes = {m: method_config(m) for m in methods}  # an unknown name exits with the list of known ones
    if "sup" not in methods:
        raise SystemExit("--methods: sup must be among them (every ratio is over it)")
    root = Path(args.data)
    if not (root / "monuseg_train").is_dir():
        print(f"skipped: no MoNuSeg at {root / 'monuseg_train'}")
        print("RESULT " + json.dumps({f"step_ratio_{m}": None for m in methods if m != "sup"}))
        return
    torch.set_num_threads(args.threads)
    rounds, steps, warmup = (2, 12, 4) if args.quick else (args.rounds, args.steps, 8)
    _, _, base, sparse = setting_data("monuseg_local", root, quick=args.quick)
    data = sparse(0)
    base = base.replace(library=False, steps=steps, val_fraction=0.0, val_every=10**9, val_first=0, device="cpu",
                        threads=args.threads, pl_start=0.0, pl_full=0.0, warmup_steps=0)
    per: dict[str, list[float]] = {m: [] for m in methods}
    ratios: dict[str, list[float]] = {m: [] for m in methods if m != "sup"}
    for r in range(rounds):
        this = {}
        for m in methods if r % 2 == 0 else methods[::-1]:  # alternate the order: no method always runs first
            cfg = base.replace(**changes[m], seed=r, checkpoint_dir=tempfile.mkdtemp(prefix=f"step_cost_{m}_"))
            t = step_times(cfg, data, warmup)
            this[m] = statistics.median(t)
            per[m] += t
        for m in ratios:
            ratios[m].append(this[m] / this["sup"])
        print(f"round {r}: " + json.dumps({m: round(v, 4) for m, v in this.items()}), flush=True)
    out = {f"step_ratio_{m}": round(statistics.median(v), 3) for m, v in ratios.items()}
    out.update({f"step_ratio_{m}_rounds": [round(x, 3) for x in v] for m, v in ratios.items()})
    out.update({f"step_s_{m}": round(statistics.median(v), 4) for m, v in per.items()})
    setup = select_device("cpu", amp=True)
    out.update({"bf16_teacher": setup.teacher_dtype == torch.bfloat16, "rounds": rounds, "steps": steps,
                "threads": args.threads, "quick": args.quick})
    print("RESULT " + json.dumps(out))


if __name__ == "__main__":
    main()
