"""Package-level contracts: the pure/GUI boundary, the manifest, the console script."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
ENGINE = ("core", "io", "labels", "models", "training", "inference", "samples", "cli")
PURE = ["napari_medseg", *(f"napari_medseg.{p}" for p in ENGINE)]


def _all_pure_modules() -> list[str]:
    mods = []
    for pkg in ENGINE:
        for f in sorted(p for p in (ROOT / "napari_medseg" / pkg).rglob("*.py") if p.name != "__main__.py"):
            rel = f.relative_to(ROOT).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            mods.append(".".join(parts))
    return mods


def test_pure_packages_import_no_gui_in_fresh_interpreter():
    mods = PURE + _all_pure_modules()
    code = (
        "import sys, importlib\n"
        f"for m in {mods!r}: importlib.import_module(m)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('napari', 'qtpy', 'magicgui', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'vispy'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"pure packages pulled in GUI modules: {out.stdout.strip()}"


def test_package_import_is_light():
    code = "import sys, napari_medseg; print('torch' in sys.modules, 'napari' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.stdout.split() == ["False", "False"], out.stdout + out.stderr


def _manifest() -> dict:
    return yaml.safe_load((ROOT / "napari_medseg" / "napari.yaml").read_text())


def test_manifest_python_names_all_import():
    commands = _manifest()["contributions"]["commands"]
    assert commands
    for cmd in commands:
        module, _, attr = cmd["python_name"].partition(":")
        obj = getattr(importlib.import_module(module), attr)
        assert callable(obj), cmd["python_name"]


def test_manifest_and_package_data_are_real_files_in_the_package():
    """napari.yaml and the sample class files live in the package itself (no symlinks, which a wheel built on
    some systems or a zip would not carry)."""
    import napari_medseg

    pkg = Path(napari_medseg.__file__).parent
    for p in [pkg / "napari.yaml", pkg / "sample_data", *(pkg / "sample_data").iterdir()]:
        assert p.exists() and not p.is_symlink(), p


def test_npe2_validate():
    out = subprocess.run([sys.executable, "-m", "npe2", "validate", "napari-medseg"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "valid" in (out.stdout + out.stderr).lower()


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["convert", "--help"]])
def test_console_script_runs(args):
    out = subprocess.run([sys.executable, "-m", "napari_medseg.cli", *args], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr


@pytest.mark.slow
def test_wheel_install_carries_manifest_and_validates(tmp_path):
    """Build a wheel, install it (no deps) into a fresh venv, and validate the manifest there: the napari.yaml
    symlink must become a real file in the wheel, and napari must find the plugin in the installed copy.

    The venv borrows its dependencies (npe2, napari, ...) from the environment running the tests through a
    ``.pth`` file, not through ``--system-site-packages``: that would expose the *base* interpreter's packages,
    which a new machine does not have (a tox or other virtual environment holds them). The venv's own
    site-packages come first on ``sys.path``, so the wheel's copy shadows the one under test."""
    import sysconfig
    import zipfile

    wheel_dir = tmp_path / "wheel"
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                          "-w", str(wheel_dir), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    wheel = next(wheel_dir.glob("napari_medseg-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "napari_medseg/napari.yaml" in names
    assert any(n.startswith("napari_medseg/sample_data/") and n.endswith(".json") for n in names), names
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True, timeout=600)
    # then the test environment's packages, after the venv's own (written after the install: pip would
    # otherwise see the copy under test there, call the requirement satisfied and install nothing)
    (Path(site) / "_medseg_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    probe = ("import importlib.metadata as md, napari_medseg\n"
             "eps = [e for e in md.entry_points(group='napari.manifest') if e.name == 'napari-medseg']\n"
             "print(napari_medseg.__file__)\n"
             "print(eps[0].dist.locate_file(''))\n")
    where = subprocess.run([str(py), "-c", probe], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert where.returncode == 0, where.stderr
    module_file, dist_root = where.stdout.split("\n")[:2]
    assert module_file.startswith(site), where.stdout  # the wheel's copy is the one imported ...
    assert Path(dist_root).resolve() == Path(site).resolve(), where.stdout  # ... and the one napari discovers
    installed_manifest = Path(site) / "napari_medseg" / "napari.yaml"
    assert installed_manifest.is_file() and not installed_manifest.is_symlink()
    assert yaml.safe_load(installed_manifest.read_text()) == _manifest()
    val = subprocess.run([str(py), "-m", "npe2", "validate", "napari-medseg"], capture_output=True, text=True,
                         cwd=tmp_path, timeout=120)
    assert val.returncode == 0 and "valid" in val.stdout.lower(), val.stdout + val.stderr
