"""The report of ``bench_ui_latency``: each phase's stalls printed (``print_phases``), and the ratios of the
plugin's phases to the control phases (``control_ratios``)."""

from __future__ import annotations

from typing import Any


def print_phases(phases: dict[str, Any], shown: Any, *, verbose: bool = False) -> None:
    """One block per phase: p50 / p99 / max of the stalls, the layers it drew (``_ui_controls.LayersShown``),
    Python's GC pauses, the most sampled main-thread sites and the stalls over 250 ms."""
    for ph in phases.values():
        s = ph.summary()
        print(f"[{s['phase']:>7}] {s['seconds']:6.1f} s  ticks {s['ticks']:5d}  p50 {s['p50_ms']:6.1f}  "
              f"p99 {s['p99_ms']:7.1f}  max {s['max_ms']:7.1f} ms  >50 ms: {s['n_over_50ms']}  "
              f">250 ms: {s['n_over_250ms']}", flush=True)
        print("           layers shown (share of the phase): " + ", ".join(
            f"{name} {f:.2f}" for name, f in shown.fractions(s["phase"]).items()), flush=True)
        print("           Python GC pauses: " + (", ".join(f"{g} {v['n']} x, {v['total_ms']:.0f} ms in all, max "
                                                          f"{v['max_ms']:.0f} ms" for g, v in s["gc"].items())
                                                 or "none"), flush=True)
        for site, n in ph.top_sites(6):
            print(f"           {n:4d} samples  {site}")
        for site, n in ph.plugin_sites.most_common(4):
            print(f"           {n:4d} samples in plugin code: {site}")
        for ms, culprits, stack in ph.long_stalls:
            print(f"           stall of {ms:.0f} ms: " + ", ".join(f"{c} ({n})" for c, n in culprits))
            if verbose:
                print(f"             {stack}")
        if verbose:
            for st, n in ph.full_stacks.most_common(4):
                print(f"        stack ({n}): {st}")


def control_ratios(phases: dict[str, Any], alone: float, layer_counts: list[int]) -> dict[str, Any]:
    """The plugin's phases over each control phase that ran: ``napari_loaded`` (the CPU load alone),
    ``napari_layersN`` (N plain extra layers under that load: the drawing floor) and ``predict_hidden``."""
    def p99(name: str) -> float:
        return phases[name].summary()["p99_ms"]

    def over(floor: float) -> dict[str, float | None]:
        return {k: round(p99(k) / floor, 3) if floor else None for k in ("train", "predict", "predict_hidden")
                if k in phases}

    controls: dict[str, Any] = {}
    if "napari_loaded" in phases:
        floor = p99("napari_loaded")
        controls = {"napari_loaded_p99_ms": floor, "loaded_vs_alone": round(floor / alone, 3) if alone else None,
                    **{f"{k}_vs_loaded": v for k, v in over(floor).items()}}
    for n in layer_counts:
        floor = p99(f"napari_layers{n}")
        controls[f"napari_layers{n}_p99_ms"] = floor
        controls[f"layers{n}_vs_alone"] = round(floor / alone, 3) if alone else None
        controls.update({f"{k}_vs_layers{n}": v for k, v in over(floor).items()})
    if "predict_hidden" in phases:
        controls["predict_hidden_p99_ratio"] = round(p99("predict_hidden") / alone, 3) if alone else None
    return controls
