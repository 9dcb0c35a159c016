"""Model files before anything is loaded: what kind a path is (checkpoint, bioimage.io package, ONNX,
TorchScript), the package's ``rdf.yaml`` read as plain YAML, and the refusal of packages that name files by
URL (checked before ``bioimageio.spec`` sees the package, so nothing is ever downloaded)."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

from napari_medseg.core.errors import MedsegError

YAML_NAMES = ("rdf.yaml", "bioimageio.yaml")


def package_yaml_in_zip(path: Path) -> str | None:
    """The description file of a zipped package, chosen as bioimage.io's own tools choose it."""
    try:
        with zipfile.ZipFile(path) as z:
            names = [n for n in z.namelist() if "/" not in n]
    except (zipfile.BadZipFile, OSError):
        return None
    return _choose_yaml(names)


def _choose_yaml(names: list[str]) -> str | None:
    cands = [n for n in names if n in YAML_NAMES or n.endswith(".bioimageio.yaml")]
    if not cands:
        return None
    try:
        from bioimageio.spec._internal.io import identify_bioimageio_yaml_file_name

        return str(identify_bioimageio_yaml_file_name(cands))
    except Exception:  # several candidates or an older spec: its preference, rdf.yaml first
        return next((n for n in YAML_NAMES if n in cands), sorted(cands)[0])


def package_yaml_in_folder(path: Path) -> Path | None:
    name = _choose_yaml([p.name for p in path.iterdir() if p.is_file()]) if path.is_dir() else None
    return path / name if name else None


def model_file_kind(path: str | os.PathLike) -> str | None:
    """``"checkpoint"``, ``"bioimageio"``, ``"onnx"``, ``"torchscript"``, or None for anything else."""
    p = Path(path)
    if p.is_dir():
        return "bioimageio" if package_yaml_in_folder(p) else None
    if not p.is_file():
        return None
    if p.suffix.lower() in (".yaml", ".yml"):
        return "bioimageio"
    if p.suffix.lower() == ".onnx":
        return "onnx"
    if zipfile.is_zipfile(p):
        if package_yaml_in_zip(p):
            return "bioimageio"
        with zipfile.ZipFile(p) as z:
            names = z.namelist()
        if any("/code/" in n or n.startswith("code/") for n in names):
            return "torchscript"
        return "checkpoint"  # torch.save's zip format: ours (or a plain state dict)
    return None


def is_foreign_model_file(path: str | os.PathLike) -> bool:
    """A file ``open_model_file`` handles and ``load_checkpoint`` does not (package, ONNX, TorchScript)."""
    return model_file_kind(path) in ("bioimageio", "onnx", "torchscript")


#: rdf.yaml keys whose values bioimage.io tools fetch (files of the package); a URL there means a download
_FETCHED = ("source", "documentation", "covers", "test_inputs", "test_outputs", "sample_inputs", "sample_outputs",
            "attachments", "dependencies", "architecture", "icon")


def _rdf_text(p: Path) -> str:
    try:
        if p.is_dir():
            y = package_yaml_in_folder(p)
            return y.read_text() if y else ""
        if zipfile.is_zipfile(p):
            with zipfile.ZipFile(p) as z:
                name = package_yaml_in_zip(p)
                return z.read(name).decode() if name else ""
        return p.read_text()
    except (OSError, UnicodeDecodeError, KeyError, zipfile.BadZipFile) as e:
        raise MedsegError(f"{p}: its rdf.yaml could not be read ({e})") from e


def _urls(node: Any, fetched: bool = False) -> list[str]:
    if isinstance(node, dict):
        return [u for k, v in node.items() for u in _urls(v, fetched or str(k) in _FETCHED)]
    if isinstance(node, list):
        return [u for v in node for u in _urls(v, fetched)]
    if fetched and isinstance(node, str) and "://" in node:  # also v0.4's "conda:https://..."
        return [node.strip()]
    return []


def refuse_urls(p: Path) -> None:
    """Refuse a package that names files by URL, before anything could download them: models are local here
    (hospital networks, offline machines), and a package must hold what it needs."""
    import yaml

    try:
        rdf = yaml.safe_load(_rdf_text(p))
    except yaml.YAMLError as e:
        raise MedsegError(f"{p} is not a valid bioimage.io model package: its rdf.yaml is not valid YAML "
                          f"({str(e).splitlines()[0][:200]})") from e
    urls = _urls(rdf)
    if urls:
        raise MedsegError(f"{p} names {len(urls)} file(s) by URL (e.g. {urls[0]}); napari-medseg downloads "
                          "nothing and uses only files inside the package. Download the package with its files "
                          "(the bioimage.io website's zip) and open that.")


def quiet_bioimageio() -> None:
    """bioimageio.spec logs through loguru to stderr; its messages go to our log (errors reach the user as
    MedsegError)."""
    try:
        from loguru import logger

        logger.disable("bioimageio")
    except ImportError:  # pragma: no cover
        pass
