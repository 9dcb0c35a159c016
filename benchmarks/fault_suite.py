"""Fault-injection suite: the cases of ``tests/faults`` run as one script, counted.

    python benchmarks/fault_suite.py [--quick] [--json OUT.json] [--keep DIR]

Runs, end to end with real processes and files:

- every bad input of ``tests/faults/faults_cases.py`` (readers, napari reader, label stores, configs,
  checkpoints, CLI) and classifies the answer: clear / unclear / accepted / crash;
- SIGKILL during training (mid checkpoint write; ``--init`` rerun), during whole-slide prediction (mid
  block and between blocks; the rerun is compared byte for byte with an uninterrupted run) and while
  painting in a napari viewer (strokes lost beyond the stated autosave window);
- a full disk (a real tmpfs when run as root, else an ENOSPC shim) while writing a checkpoint, labels,
  a prediction and during training;
- simulated GPU out-of-memory in training and prediction;
- a corrupt zarr chunk and a truncated/damaged TIFF tile (position named);
- a checkpoint crafted to run code, through every loader; files claiming absurd dimensions.

Without ``--quick`` it adds random-moment kills (training x3, prediction x3) and the metadata fuzzers. A
random moment is a seeded random fraction of the measured length of an uninterrupted run of the same job
(not a fixed delay, which a fast machine outruns); every kill scenario reports ``mid_run`` (the child died of
the SIGKILL before its result was complete), and one whose kill never landed mid-run is a failure, listed
in ``kills_not_mid_run`` and never counted as resumed.
``--quick`` stays under a minute on an idle 2-core machine (more on a shared one).

Last line: ``RESULT {"bad_inputs", "clear_errors", "crashes", "lost", "resumed_identical",
"malicious_checkpoint_ran_code", "cases": {...}}``. ``crashes`` counts bad inputs and scenarios that ended
in an exception or a traceback instead of a clear message; ``lost`` counts annotations, checkpoints or
outputs lost beyond what the guarantees (docs/safety.md) allow.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
FAULTS = HERE.parent / "tests" / "faults"
sys.path.insert(0, str(FAULTS))


def _scenario(name: str, fn: Callable[[Path], dict[str, Any]], root: Path, log: Callable[[str], None]) -> dict:
    t0 = time.perf_counter()
    folder = root / name.replace(" ", "_").replace("/", "_")
    folder.mkdir(parents=True, exist_ok=True)
    try:
        res = fn(folder)
    except Exception as e:  # a scenario that blows up is a crash of the system under test (or of the suite)
        res = {"ok": False, "exception": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-1500:]}
    res["seconds"] = round(time.perf_counter() - t0, 1)
    state = {True: "ok", False: "FAIL", None: "skipped"}[res.get("ok")]
    log(f"{state:7s} {res['seconds']:6.1f}s  {name}")
    return res


def run(quick: bool, root: Path, log: Callable[[str], None]) -> dict[str, Any]:
    import faults_inputs as FI
    import faults_scenarios as FS
    from faults_cases import KNOWN_BUGS, all_cases, run_case

    cases: dict[str, Any] = {}
    t_start = time.perf_counter()

    # -- bad inputs ------------------------------------------------------------------------------------
    counts = {"clear": 0, "unclear": 0, "accepted": 0, "crash": 0}
    bad_cases = all_cases()
    for i, case in enumerate(bad_cases):
        out = run_case(case, root / "bad" / f"{i:02d}")
        counts[out.status] += 1
        entry = {"entry": case.entry, "status": out.status, "message": out.message[:300]}
        if case.name in KNOWN_BUGS:
            entry["known_bug"] = KNOWN_BUGS[case.name]
        cases[f"bad input: {case.name}"] = entry
        if out.status != "clear":
            log(f"{out.status:7s}          bad input: {case.name}: {out.message[:160]}")
    log(f"bad inputs: {len(bad_cases)} cases, {counts}")

    # -- scenarios -------------------------------------------------------------------------------------
    sc: dict[str, dict] = {}
    fixture = FS.predict_fixture(root / "predict-fixture")
    plan: list[tuple[str, Callable[[Path], dict]]] = [
        ("safe loading: crafted checkpoint", FI.malicious_checkpoint),
        ("safe loading: absurd dimensions", FI.absurd_headers),
        ("corrupt inputs: positions named", FI.corrupt_inputs),
        ("full disk: checkpoint", FS.full_disk_checkpoint),
        ("full disk: labels", FS.full_disk_labels),
        ("full disk: training", FS.full_disk_training),
        ("oom: training", FS.oom_training),
        ("oom: prediction", lambda d: FS.oom_predict(d, fixture=fixture)),
        ("kill: training mid checkpoint write", FS.kill_training),
        ("kill: prediction mid block", lambda d: FS.kill_predict(d, "mid_block", fixture=fixture)),
        ("kill: painting", FS.kill_painting),
    ]
    if not quick:
        plan += [
            ("kill: prediction between blocks", lambda d: FS.kill_predict(d, "between_blocks", fixture=fixture)),
            ("full disk: prediction", lambda d: FS.full_disk_predict(d, fixture=fixture)),
            ("kill: training at random moments x3", lambda d: FS.kill_training_random(d, kills=3)),
        ]
        plan += [(f"kill: prediction at a random moment (seed {s})",
                  lambda d, s=s: FS.kill_predict(d, "random", seed=s, fixture=fixture)) for s in range(3)]
        plan += [(f"fuzz: {kind} metadata", lambda d, kind=kind: _fuzz(kind, d)) for kind in ("tiff", "nifti", "zarr")]
    for name, fn in plan:
        sc[name] = _scenario(name, fn, root, log)
    for name, res in sc.items():
        cases[name] = {k: v for k, v in res.items() if k != "traceback"}

    # -- counting --------------------------------------------------------------------------------------
    def crashed(res: dict) -> bool:
        text = json.dumps(res, default=str)
        return "exception" in res or "Traceback" in text or res.get("exit") == 1 or res.get("rerun_exit") == 1

    scenario_crashes = [n for n, r in sc.items() if crashed(r)]
    paint = sc.get("kill: painting", {})
    labels = sc["full disk: labels"]
    training = sc["kill: training mid checkpoint write"]
    random_kills = sc.get("kill: training at random moments x3", {}).get("kills", [])
    lost = sum([
        int(paint.get("lost_beyond_window") or 0),  # strokes older than the autosave window
        int(not sc["full disk: checkpoint"].get("earlier_intact", False)),
        int(not (labels.get("kept_in_memory") and labels.get("earlier_intact_on_disk") and labels.get("saved_elsewhere"))),
        int(not training.get("all_checkpoints_load", False)),
        sum(1 for k in random_kills if not k["all_load"]),
        int(sc["full disk: training"].get("ok") is not None and not sc["full disk: training"].get("all_checkpoints_load")),
    ])
    # a kill that did not land mid-run tested no resumption: it counts as not identical
    identical = [bool(r.get("identical", r.get("identical_after_resume"))) and r.get("mid_run", True)
                 for n, r in sc.items()
                 if n.startswith(("kill: prediction", "full disk: prediction")) and r.get("ok") is not None]
    not_mid_run = [n for n, r in sc.items() if n.startswith("kill: ") and r.get("ok") is not None
                   and (r.get("mid_run") is False or any(not k.get("mid_run", True) for k in r.get("kills", [])))]
    mal = sc["safe loading: crafted checkpoint"]
    result = {
        "bad_inputs": len(bad_cases),
        "clear_errors": counts["clear"],
        "crashes": counts["crash"] + len(scenario_crashes),
        "lost": lost,
        "resumed_identical": bool(identical) and all(identical),
        "malicious_checkpoint_ran_code": bool(mal.get("ran_code", True)),
        "unclear": counts["unclear"], "accepted_bad_input": counts["accepted"],
        "scenarios_ok": sum(1 for r in sc.values() if r.get("ok")), "scenarios": len(sc),
        "scenario_crashes": scenario_crashes,
        "kills_not_mid_run": not_mid_run,
        "resumed_training": bool(training.get("resumed")),
        "painting_max_lost_age_s": paint.get("max_lost_age_s"), "autosave_window_s": paint.get("stated_window_s"),
        "full_disk_method": sc["full disk: checkpoint"].get("method"),
        "mode": "quick" if quick else "full", "seconds": round(time.perf_counter() - t_start, 1),
        "cases": cases,
    }
    return result


def _fuzz(kind: str, d: Path) -> dict[str, Any]:
    import test_fuzz_metadata as F

    seeds = F.make_seeds(d / "seeds")
    scratch = d / "scratch"
    scratch.mkdir()
    fn = {"tiff": F.test_mutated_tiff_headers, "nifti": F.test_mutated_nifti_headers,
          "zarr": F.test_mutated_zarr_metadata}[kind]
    fn(seeds=seeds, scratch=scratch)  # hypothesis runs F.EXAMPLES mutated files; raises on a failure
    return {"ok": True, "examples": F.EXAMPLES}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the core cases only (about a minute)")
    ap.add_argument("--json", type=Path, help="also write the full result here")
    ap.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary one)")
    args = ap.parse_args()

    os.environ.setdefault("NAPARI_MEDSEG_CACHE", tempfile.mkdtemp(prefix="medseg-fault-cache-"))
    os.environ.setdefault("TQDM_DISABLE", "1")
    import torch

    torch.set_num_threads(1)
    root = args.keep or Path(tempfile.mkdtemp(prefix="medseg-faults-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        result = run(args.quick, root, lambda s: print(s, file=sys.stderr, flush=True))
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str))
    print("RESULT " + json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
