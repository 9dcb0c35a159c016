"""Scenarios on damaged and crafted inputs, for ``benchmarks/fault_suite.py`` (the tests check the same
behaviour piece by piece in ``test_corrupt_inputs.py`` and ``test_safe_loading.py``)."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from faults_lib import clear_cli_error, clear_error, run_cli, textured_rgb, tiny_checkpoint, write_pairs
from faults_safety import unsafe_load_runs_code, write_malicious_checkpoint, write_pickle_zarr


def _error_of(fn: Callable[[], Any]) -> str | None:
    from napari_medseg.core.errors import MedsegError

    try:
        fn()
    except MedsegError as e:
        return str(e)
    return None


def corrupt_inputs(root: Path) -> dict[str, Any]:
    """A truncated chunk in an NGFF zarr, a truncated TIFF and a TIFF with a damaged tile: each reported
    with its position when opened or read, and by ``napari-medseg predict``."""
    import tifffile

    from napari_medseg.io import open_path

    root.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {}
    tif = root / "src.tif"
    tifffile.imwrite(tif, textured_rgb(512, 512), tile=(128, 128), photometric="rgb", compression="zlib")
    z = root / "slide.zarr"
    code, err = run_cli(["convert", str(tif), str(z), "--chunk", "128", "--no-progress"])
    chunk = z / "0" / "0" / "1" / "2"
    chunk.write_bytes(chunk.read_bytes()[:30])  # rows 128:256, columns 256:384
    msg = _error_of(lambda: np.asarray(open_path(z)[0].levels[0]))
    out["zarr_chunk_read"] = {"message": msg, "position_named": bool(msg and "y=128:256, x=256:384" in msg)}
    ck = tiny_checkpoint(root / "m.pt")
    code, err = run_cli(["predict", str(ck), str(z), "--out", str(root / "out"), "--window", "128",
                         "--tissue-mask", "off", "--device", "cpu"])
    ok, why = clear_cli_error(code, err, "y=128:256, x=256:384")
    out["zarr_chunk_predict"] = {"exit": code, "position_named": ok, "why": why}

    cut = root / "cut.tif"
    with tifffile.TiffFile(tif) as tf:
        end9 = int(tf.pages[0].dataoffsets[9]) + int(tf.pages[0].databytecounts[9])
    cut.write_bytes(tif.read_bytes()[: end9 - 10])
    msg = _error_of(lambda: open_path(cut))
    out["tiff_truncated_open"] = {"message": msg, "position_named": bool(msg and "y=256:384, x=128:256" in msg)}

    bad = root / "bad-tile.tif"
    with tifffile.TiffFile(tif) as tf:
        off, n = int(tf.pages[0].dataoffsets[6]), int(tf.pages[0].databytecounts[6])
    raw = bytearray(tif.read_bytes())
    raw[off: off + n] = b"\x00" * n
    bad.write_bytes(bytes(raw))
    msg = _error_of(lambda: np.asarray(open_path(bad)[0].levels[0]))
    out["tiff_tile_read"] = {"message": msg, "position_named": bool(msg and "y=128:256, x=256:384" in msg)}
    out["ok"] = all(v["position_named"] for v in out.values() if isinstance(v, dict))
    return out


def malicious_checkpoint(root: Path) -> dict[str, Any]:
    """A checkpoint that runs code when unpickled, through every entry point that loads checkpoints."""
    from napari_medseg.models.checkpoint import load_checkpoint, load_model
    from napari_medseg.models.export import export_checkpoint
    from napari_medseg.training.rounds import resolve_init

    root.mkdir(parents=True, exist_ok=True)
    marker = root / "PWNED"
    evil = write_malicious_checkpoint(root / "evil.pt", marker)
    control = unsafe_load_runs_code(evil, marker)
    data = write_pairs(root / "data", n=1)
    tifffile_img = root / "x.tif"
    import tifffile

    tifffile.imwrite(tifffile_img, np.zeros((64, 64, 3), np.uint8), photometric="rgb")
    entries: dict[str, Callable[[], Any]] = {
        "load_checkpoint": lambda: load_checkpoint(evil),
        "load_model": lambda: load_model(evil),
        "resolve_init": lambda: resolve_init(evil),
        "export_checkpoint": lambda: export_checkpoint(evil, root / "exported.pt"),
        "cli predict": lambda: run_cli(["predict", str(evil), str(tifffile_img), "--out", str(root / "o"),
                                        "--window", "64"]),
        "cli train --init": lambda: run_cli(["train", "--data", str(data), "--init", str(evil), "--out",
                                             str(root / "run"), "--steps", "2", "--no-progress"]),
    }
    results = {}
    for name, fn in entries.items():
        try:
            res = fn()
            ok, why = clear_cli_error(*res, must_name="evil.pt") if isinstance(res, tuple) else (False, "accepted")
        except Exception as e:  # noqa: BLE001
            ok, why = clear_error(e, "evil.pt")
        results[name] = {"clear_refusal": ok, "why": why, "code_ran": marker.exists()}
    zmarker = root / "PWNED-zarr"
    zpath = write_pickle_zarr(root / "evil.zarr", zmarker)
    from napari_medseg.io import open_path

    zmsg = _error_of(lambda: np.asarray(open_path(zpath)[0].levels[0]))
    results["open_path (pickle codec zarr)"] = {"clear_refusal": bool(zmsg), "code_ran": zmarker.exists()}
    ran = any(r["code_ran"] for r in results.values())
    return {"ok": control and not ran and all(r["clear_refusal"] for r in results.values()),
            "control_unsafe_load_runs_code": control, "ran_code": ran, "entries": results}


def absurd_headers(root: Path) -> dict[str, Any]:
    """Files claiming absurd dimensions: refused with a clear message, Python-traced memory in MB."""
    from faults_cases import _absurd_tiff, write_absurd_checkpoint, write_absurd_zarr

    from napari_medseg.io import open_path
    from napari_medseg.models.checkpoint import load_model

    root.mkdir(parents=True, exist_ok=True)

    def nifti(d: Path) -> Path:
        import nibabel as nib

        img = nib.Nifti1Image(np.zeros((2, 2, 2), np.int16), np.eye(4))
        img.header.set_data_shape((32767, 32767, 32767))
        (d / "huge.nii").write_bytes(img.header.binaryblock + b"\0" * 20)
        return d / "huge.nii"

    makers = {"tiff 2^31 px": lambda d: _absurd_tiff(d / "huge.tif"), "nifti 32767^3": nifti,
              "zarr 2^40 px": lambda d: write_absurd_zarr(d / "huge.zarr"), "checkpoint 2^21 channels": lambda d: write_absurd_checkpoint(d / "huge.pt")}
    out = {}
    for name, make in makers.items():
        d = root / name.split()[0]
        d.mkdir()
        p = make(d)
        tracemalloc.start()
        try:
            msg = _error_of(lambda p=p, name=name: load_model(p) if name.startswith("checkpoint") else open_path(p))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        out[name] = {"refused": bool(msg), "peak_mb": round(peak / 1e6, 2)}
    return {"ok": all(v["refused"] and v["peak_mb"] < 32 for v in out.values()), "cases": out}
