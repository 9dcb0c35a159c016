"""``when_destroyed``: clean-up when a widget goes, by Qt or by the garbage collector, without the crash of a
lambda on ``destroyed`` (see ``napari_medseg._napari.widget_lifetime``)."""

from __future__ import annotations

import gc
import logging
import os
import subprocess
import sys
import textwrap
import threading
import weakref

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QApplication, QDockWidget, QMainWindow, QWidget

from napari_medseg._napari import widget_lifetime
from napari_medseg._napari.widget_lifetime import when_destroyed


class _Box(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.closed = 0
        self.me = self  # a reference cycle: only the collector frees this wrapper
        when_destroyed(self, self.close_it)

    def close_it(self):
        self.closed += 1
        _Box.seen.append(self.closed)

    seen: list[int] = []


def _deferred_deletes(qtbot):
    """Let Qt run its deferred deletions (``deleteLater``: they wait for the event loop, not processEvents)."""
    qtbot.wait(10)
    QApplication.sendPostedEvents(None, 0)  # 0: QEvent::DeferredDelete included
    QApplication.processEvents()


def test_a_bound_method_runs_once_when_qt_deletes_the_widget(qtbot):
    _Box.seen.clear()
    gc.collect()  # widgets left as garbage by earlier tests must not leave the registry during this one
    before = widget_lifetime.pending_count()
    win = QMainWindow()
    win.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)  # as napari's window
    dock = QDockWidget("d", win)
    box = _Box()
    dock.setWidget(box)
    win.addDockWidget(Qt.DockWidgetArea.LeftDockWidgetArea, dock)
    assert widget_lifetime.pending_count() == before + 1
    ref = weakref.ref(box)
    del box, dock
    win.close()
    del win
    _deferred_deletes(qtbot)
    gc.collect()
    assert _Box.seen == [1]  # ran, on the live widget, once
    assert widget_lifetime.pending_count() == before
    assert ref() is None  # the registry keeps nothing alive


def test_a_plain_callable_runs_when_the_collector_frees_the_widget_and_nothing_is_kept(qapp):
    stop = threading.Event()
    w = QWidget()
    w.me = w  # a cycle
    when_destroyed(w, stop.set)
    ref = weakref.ref(w)
    gc.collect()  # only w is left to free (earlier tests' garbage would change the count), and w is held
    before = widget_lifetime.pending_count()
    del w
    gc.collect()
    assert ref() is None
    assert stop.is_set()
    assert widget_lifetime.pending_count() == before - 1


def test_a_bound_method_of_a_collected_widget_is_skipped_and_the_widget_not_kept(qapp):
    _Box.seen.clear()
    ref = weakref.ref(_Box())
    gc.collect()
    assert ref() is None  # the registry held it weakly
    assert _Box.seen == []  # its method went with it


def test_a_failing_clean_up_is_logged_not_raised(qtbot, caplog):
    def fail():
        raise ValueError("boom")

    w = QWidget()
    when_destroyed(w, fail)
    with caplog.at_level(logging.ERROR, logger=widget_lifetime.__name__):
        w.deleteLater()
        _deferred_deletes(qtbot)
    assert "clean-up after QWidget failed" in caplog.text and "boom" in caplog.text


def test_many_widgets_freed_by_the_collector_do_not_crash(tmp_path):
    """The CI crash of 2026-12-05, in a loop: widgets in reference cycles, each with a clean-up that refers
    to it (bound method) and one that does not, freed by the collector. With a lambda connected to
    ``destroyed`` instead, this loop ended in a segmentation fault (PyQt6 6.x, Python 3.11). Run in a child
    process: a crash must fail this test, not end the test session."""
    script = tmp_path / "loop.py"
    script.write_text(textwrap.dedent("""
        import gc, threading
        from qtpy.QtWidgets import QApplication, QGroupBox, QWidget
        from napari_medseg._napari.widget_lifetime import when_destroyed, pending_count
        app = QApplication([])
        class Inner(QGroupBox):
            def __init__(self, parent):
                super().__init__("x", parent)
                self.stop = threading.Event()
                self.me = self
                when_destroyed(self, self.stop.set)
        class Outer(QWidget):
            def __init__(self):
                super().__init__()
                self.inner = Inner(self)
                self.me = self
                when_destroyed(self, self.close_it)
            def close_it(self):
                self.inner.stop.set()
        for i in range(2000):
            Outer()
            if i % 50 == 0:
                gc.collect()
                app.processEvents()
        gc.collect()
        print("pending", pending_count())
    """))
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "pending 0" in done.stdout  # every widget's entries left the registry
