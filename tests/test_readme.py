"""The README's commands run as written: every shell code block (```bash) is read from README.md and each of
its commands is run, in order, in an empty folder, except the few that cannot run in a test (each rule below
says why). The command-line walkthrough's outputs are then checked: a checkpoint that knows the sample's
classes and pixel size, and a prediction of the converted slide."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
SHELL_LANGS = {"bash", "sh", "shell", "console"}


def shell_blocks(text: str) -> list[tuple[str, list[str]]]:
    """(the heading above, the commands) of each shell code block; a command is a logical line (backslash
    continuations joined), comment lines and blank lines left out."""
    blocks, heading, block, lang = [], "", None, None
    for line in text.splitlines():
        fence = re.match(r"^```\s*(\S*)", line)
        if block is None and fence:
            block, lang = [], fence.group(1).lower()
            continue
        if block is not None and line.startswith("```"):
            if lang in SHELL_LANGS:
                blocks.append((heading, _commands(block)))
            block = None
            continue
        if block is not None:
            block.append(line)
        elif line.startswith("#"):
            heading = line.lstrip("#").strip()
    return blocks


def _commands(lines: list[str]) -> list[str]:
    out, current = [], ""
    for line in lines:
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        out.append(current + stripped)
        current = ""
    if current:
        out.append(current)
    return out


def skip_reason(command: str) -> str | None:
    """Why a README command is not run here, or None to run it."""
    words = shlex.split(command, comments=True)
    # installing changes the environment the tests run in; the test runs in the installed development env
    if "pip" in words and "install" in words:
        return "installs packages"
    # GUI: opens a napari window and runs its event loop until the user closes it (the GUI tests cover
    # opening files and the samples in a real viewer)
    if words[:1] == ["napari"] or words[:2] == ["napari-medseg", "gui"]:
        return "opens the napari window"
    # CI: installs system packages and runs the whole test suite, this test included
    if words[:2] == ["bash", ".ci/run"]:
        return "runs the whole test suite"
    return None


def test_quickstart_is_two_commands():
    """On a fresh machine: one command installs and opens napari with the plugin and a sample, one installs
    what the tests need and runs them."""
    quick = next(cmds for heading, cmds in shell_blocks(README.read_text()) if heading == "Quickstart")
    assert len(quick) == 2, quick
    first, second = quick
    assert "pip install" in first and "napari-medseg gui --sample slide" in first
    assert second == "bash .ci/run"


def test_readme_torch_install_names_the_cpu_index():
    """The pin is kept for reproducibility; the CPU-only build comes from PyTorch's CPU wheel index (the
    public index's Linux wheels are CUDA builds whatever the pin)."""
    text = " ".join(README.read_text().split())
    assert "torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in text
    assert "pinned for reproducibility" in text


@pytest.mark.slow
def test_readme_commands_run_as_written(tmp_path):
    blocks = shell_blocks(README.read_text())
    commands = [c for _, cmds in blocks for c in cmds]
    to_run = [c for c in commands if skip_reason(c) is None]
    # the walkthrough is there and runs end to end: sample, convert, train, predict
    assert [shlex.split(c)[1] for c in to_run if c.startswith("napari-medseg")][:4] == \
        ["sample", "convert", "train", "predict"], to_run
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           # the console scripts of the environment under test (napari-medseg), first on the PATH
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    for command in to_run:
        done = subprocess.run(command, shell=True, executable="/bin/bash", cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"README command failed: {command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"

    # the checkpoint knows the sample's classes (names and colours) and its 0.5 um/px
    from napari_medseg.io import open_path
    from napari_medseg.models.checkpoint import load_checkpoint

    demo = tmp_path / "demo"
    classes = json.loads((demo / "slide_classes.json").read_text())
    ck = load_checkpoint(demo / "run" / "last.pt")
    assert list(ck.classes.names) == classes["names"] == ["background", "stroma", "gland", "nucleus"]
    assert list(ck.classes.colors) == classes["colors"]
    assert ck.meta["pixel_size"] == pytest.approx([0.5, 0.5]) and ck.meta["unit"] == "micrometer"
    # the prediction covers the converted slide at its pixel size
    slide = open_path(demo / "slide.zarr")[0]
    pred = next(s for s in open_path(demo / "pred" / "slide.prediction.zarr") if s.kind == "labels")
    assert pred.shape == slide.shape and pred.pixel_size == pytest.approx((0.5, 0.5))
