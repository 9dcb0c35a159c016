"""Interrupted, cancelled and resumed runs end byte-identical to uninterrupted ones."""

from __future__ import annotations

import threading

import pytest
from infer_helpers import store_bytes

from napari_medseg.inference import BlockDone, predict, run_predict
from napari_medseg.inference.output import read_manifest

KW = dict(window=(64, 64), overlap=0.25, batch_size=3, tissue_mask=False, device="cpu", block=(64, 64),
          write_probs="uint8")


def _reference(tmp_path, src, model):
    ref = tmp_path / "ref.zarr"
    run_predict(src, model, ref, **KW)
    return store_bytes(ref)


@pytest.mark.parametrize("stop_after", [1, 7])
def test_cancel_then_resume_is_identical(tmp_path, rgb_source, unet2d, stop_after):
    ref = _reference(tmp_path, rgb_source, unet2d)
    out = tmp_path / "o.zarr"
    cancel = threading.Event()
    n = 0
    for ev in predict(rgb_source, unet2d, out, cancel=cancel, **KW):
        if isinstance(ev, BlockDone):
            n += 1
            if n == stop_after:
                cancel.set()
    assert read_manifest(out)["status"] == "cancelled"
    res = run_predict(rgb_source, unet2d, out, **KW)
    assert res.blocks_resumed >= stop_after and res.blocks_done == res.blocks_total
    assert read_manifest(out)["status"] == "complete"
    assert store_bytes(out) == ref


def test_killed_generator_resumes_identical(tmp_path, rgb_source, unet2d):
    """Closing the generator mid-run (as a killed worker thread would) leaves a resumable store."""
    ref = _reference(tmp_path, rgb_source, unet2d)
    out = tmp_path / "o.zarr"
    gen = predict(rgb_source, unet2d, out, **KW)
    n = 0
    for ev in gen:
        if isinstance(ev, BlockDone):
            n += 1
            if n == 4:
                break
    gen.close()
    assert read_manifest(out)["status"] == "interrupted"
    assert not [t for t in threading.enumerate() if t.name.startswith("medseg-write")]  # the store closed its pool
    run_predict(rgb_source, unet2d, out, **KW)
    assert store_bytes(out) == ref


def test_unfinished_block_chunks_are_redone(tmp_path, rgb_source, unet2d):
    """A block whose chunks were written but not journaled (killed between the two) is recomputed."""
    ref = _reference(tmp_path, rgb_source, unet2d)
    out = tmp_path / "o.zarr"
    run_predict(rgb_source, unet2d, out, **KW)
    journal = out / "medseg" / "journal"
    for f in sorted(journal.iterdir())[::3]:
        f.unlink()
    # corrupt a chunk of an unjournaled block: the resume overwrites it
    (out / "labels" / "prediction" / "0" / "0" / "0").write_bytes(b"garbage")
    res = run_predict(rgb_source, unet2d, out, **KW)
    assert 0 < res.blocks_done - res.blocks_resumed < res.blocks_total
    assert store_bytes(out) == ref


def test_resume_removes_a_killed_writers_temporary_chunk_files(tmp_path, rgb_source, unet2d):
    """zarr writes a chunk to ``<key>.<uuid hex>.partial`` and renames it: a SIGKILL in between leaves that
    file (seen in the fault suite). The resume deletes such files; it leaves a look-alike name alone."""
    ref = _reference(tmp_path, rgb_source, unet2d)
    out = tmp_path / "o.zarr"
    run_predict(rgb_source, unet2d, out, **KW)
    (out / "medseg" / "journal" / sorted((out / "medseg" / "journal").iterdir())[0].name).unlink()
    chunk_dir = out / "labels" / "prediction" / "0" / "0"
    (chunk_dir / f"0.{'ab12' * 8}.partial").write_bytes(b"half a chunk")
    (out / "probs" / "0" / f"0.{'0f' * 16}.partial").write_bytes(b"")
    (out / "notes.partial").write_bytes(b"a user's file, not zarr's")
    run_predict(rgb_source, unet2d, out, **KW)
    got = store_bytes(out)
    assert got.pop("notes.partial") == b"a user's file, not zarr's"
    assert got == ref and [p.name for p in out.rglob("*.partial")] == ["notes.partial"]


def test_resume_of_complete_output_does_nothing(tmp_path, rgb_source, unet2d):
    out = tmp_path / "o.zarr"
    run_predict(rgb_source, unet2d, out, **KW)
    res = run_predict(rgb_source, unet2d, out, **KW)
    assert res.blocks_resumed == res.blocks_total and res.windows_computed == 0
