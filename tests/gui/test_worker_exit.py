"""A worker still running when the interpreter exits no longer aborts the process: ``workers.wait_at_exit``
(registered with ``atexit``) lets it end before Python deletes its superqt signals. Without it, the worker's
warning after the clean-up raises "GeneratorWorkerSignals has been deleted" in its thread and the process ends
with SIGABRT (what ``benchmarks/bench_ui_latency.py --quick`` did after the ranking that follows training)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import atexit, sys, time, warnings
    from qtpy.QtWidgets import QApplication
    app = QApplication.instance() or QApplication([])
    from napari_medseg._napari.jobs import workers

    def work():
        time.sleep(0.5)  # still running when the script ends
        warnings.warn("a warning from a worker after the script ended")
        yield 1

    if sys.argv[1:] == ["no-wait"]:
        atexit.unregister(workers.wait_at_exit)
    workers.start_generator_worker(work, on_event=lambda e: None, on_finished=lambda: None)
    app.processEvents()
    time.sleep(0.1)
    print("leaving", flush=True)
""")


def _run(tmp_path, *args: str) -> subprocess.CompletedProcess:
    script = tmp_path / "exit_with_worker.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, env=env, timeout=120)


def test_exit_waits_for_a_running_worker(tmp_path):
    done = _run(tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "leaving" in done.stdout and "has been deleted" not in done.stderr


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the abort was seen on Linux (PyQt6)")
def test_without_the_wait_the_same_exit_aborts(tmp_path):
    """The control: the failure the wait prevents still happens without it (else the test above proves nothing)."""
    done = _run(tmp_path, "no-wait")
    assert done.returncode != 0 and "has been deleted" in done.stderr


def test_wait_returns_at_once_without_workers():
    from napari_medseg._napari.jobs.workers import wait_at_exit

    assert wait_at_exit(0.01) is True
