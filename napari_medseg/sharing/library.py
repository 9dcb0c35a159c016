"""The model library: one folder of trained and imported models, each with a card saying what it is.

Each model is a sub-folder named after it (``models/nuclei-he/``) holding ``card.json`` (kind, architecture,
channels, dimensions, classes, pixel size, when it was made, the images it was trained on, validation metrics,
the model it was fine-tuned from) and the model file: ``model.pt`` + ``model.json`` (a checkpoint),
``package.zip`` or ``package/`` (bioimage.io), ``model.onnx`` / ``model.ts`` (+ its sidecar ``model.json``).

Where: ``$NAPARI_MEDSEG_MODELS`` if set, else ``models`` in the user data folder (``core.user_folders``).
Training adds its final model here (``TrainConfig.library``), ``napari-medseg models add`` and ``add_file`` add
any model file napari-medseg opens. A site can pre-seed models for everyone: a shared read-only folder of
entries named by ``$NAPARI_MEDSEG_MODELS`` (then nothing can be added), or listed in
``$NAPARI_MEDSEG_MODELS_EXTRA`` (folders separated by ``os.pathsep``), which ``list_models`` and ``find``
search after the user's own folder; writes go to ``library_folder()`` only.

Adding is atomic: the entry is written into a hidden temporary folder beside the others and renamed into
place, so a failure (full disk, a crash) never leaves half an entry. A card that cannot be read is skipped
with a warning: one damaged entry never hides the others. Pure: no Qt, no napari; torch loads only when a
checkpoint is added.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import logging
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from napari_medseg.core.errors import MedsegError

log = logging.getLogger(__name__)

LIBRARY_ENV = "NAPARI_MEDSEG_MODELS"
EXTRA_ENV = "NAPARI_MEDSEG_MODELS_EXTRA"
CARD = "card.json"
CARD_FORMAT = "napari-medseg-library-card"
CARD_VERSION = 1
NAME_RE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}$")
NAME_RULE = "letters, digits, '-', '_' and '.' only, at most 100, not starting with '.'"
#: metrics of a checkpoint's ``meta`` copied to the card (per-class dicts become one value per class)
METRIC_KEYS = ("mean_dice", "val_dice", "mean_iou", "hd95")


# -- folders -------------------------------------------------------------------------------------------------
def library_folder() -> Path:
    """The folder models are added to: ``$NAPARI_MEDSEG_MODELS``, else ``<user data folder>/models``."""
    value = os.environ.get(LIBRARY_ENV, "").strip()
    if value:
        return Path(value).expanduser()
    from napari_medseg.core.user_folders import data_folder

    return data_folder() / "models"


def extra_folders() -> list[Path]:
    """The read-only folders of ``$NAPARI_MEDSEG_MODELS_EXTRA`` (separated by ``os.pathsep``), in order."""
    value = os.environ.get(EXTRA_ENV, "")
    return [Path(v.strip()).expanduser() for v in value.split(os.pathsep) if v.strip()]


def library_folders(folder: str | os.PathLike | None = None) -> list[Path]:
    """The folders searched, the writable one first: ``[folder]`` when given, else ``library_folder()`` and
    the extra folders (each once)."""
    if folder is not None:
        return [Path(folder)]
    out: list[Path] = []
    for f in (library_folder(), *extra_folders()):
        if not any(os.path.abspath(f) == os.path.abspath(o) for o in out):
            out.append(f)
    return out


def check_name(name: str) -> str:
    """``name`` if it is a valid library name, else ``MedsegError`` saying the rule."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise MedsegError(f"{name!r} is not a valid model name: use {NAME_RULE} (e.g. nuclei-he_v2)")
    return name


def slug(text: str) -> str:
    """``text`` as a valid name: other characters become '-', runs of them one (``"nuclei H&E" -> "nuclei-H-E"``)."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-.")
    return s[:80].rstrip("-.") or "model"


# -- entries -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LibraryEntry:
    """One model of the library (one sub-folder with a ``card.json``)."""

    name: str
    folder: Path
    model_file: Path
    kind: str  # "checkpoint" | "bioimageio" | "onnx" | "torchscript"
    architecture: str
    in_channels: int | None
    spatial_dims: int | None
    classes: tuple[str, ...]  # without the background
    pixel_size: tuple[float, ...] | None = None
    unit: str | None = None
    created: str = ""  # ISO date-time
    training_data: tuple[str, ...] = ()  # image paths / names the model was trained on
    metrics: dict[str, float] = field(default_factory=dict)  # mean_dice, dice_<class>, hd95 ...
    parent: str | None = None  # the library name or file it was fine-tuned from
    description: str = ""

    def fits(self, channels: int | None = None, spatial_dims: int | None = None) -> bool:
        """Whether the model takes an image of ``channels`` channels and ``spatial_dims`` dimensions (None:
        any). A 2D model fits a 3D image (slice by slice); a 3D model never fits a 2D image."""
        if channels is not None and self.in_channels is not None and int(channels) != self.in_channels:
            return False
        if spatial_dims is not None and self.spatial_dims is not None:
            return self.spatial_dims == 2 or int(spatial_dims) == self.spatial_dims
        return True

    @property
    def dice(self) -> float | None:
        """The headline validation Dice (``mean_dice``, else ``val_dice``), if recorded."""
        for k in ("mean_dice", "val_dice", "dice"):
            if _finite(v := self.metrics.get(k)):
                return float(v)
        return None

    def summary(self) -> str:
        """One line: ``nuclei-he  unet 2D, 3 ch, classes nucleus; Dice 0.83 (2026-12-04)``."""
        dims = f" {self.spatial_dims}D" if self.spatial_dims else ""
        ch = f", {self.in_channels} ch" if self.in_channels else ""
        cl = f", classes {', '.join(self.classes)}" if self.classes else ""
        dice = f"; Dice {self.dice:.2f}" if self.dice is not None else ""
        date = f" ({self.created[:10]})" if self.created else ""
        return f"{self.name}  {self.architecture or self.kind}{dims}{ch}{cl}{dice}{date}"

    def to_dict(self) -> dict[str, Any]:
        """The card's fields with absolute paths (what ``napari-medseg models show`` prints)."""
        return json.loads(json.dumps({f.name: getattr(self, f.name) for f in fields(self)}, default=str))


def _opt_int(v: Any, what: str) -> int | None:
    if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
        raise ValueError(f"{what} must be an integer or null")
    return v


def read_card(folder: Path) -> LibraryEntry:
    """The entry in ``folder`` from its ``card.json``; ``MedsegError`` saying what is wrong with it."""
    path = folder / CARD
    try:
        card = json.loads(path.read_text())
        if not isinstance(card, dict) or card.get("format") != CARD_FORMAT:
            raise ValueError(f"not a library card (no format {CARD_FORMAT!r})")
        rel = Path(str(card["model_file"]))
        if rel.is_absolute() or ".." in rel.parts or not rel.parts:
            raise ValueError(f"model_file {str(rel)!r} must be a name inside the entry's folder")
        model_file = folder / rel
        if not model_file.exists():
            raise ValueError(f"its model file {rel} is missing")
        px = card.get("pixel_size")
        metrics = card.get("metrics") or {}
        if not isinstance(metrics, dict):
            raise ValueError("metrics must be an object")
        return LibraryEntry(
            name=folder.name, folder=folder, model_file=model_file, kind=str(card["kind"]),
            architecture=str(card.get("architecture") or ""),
            in_channels=_opt_int(card.get("in_channels"), "in_channels"),
            spatial_dims=_opt_int(card.get("spatial_dims"), "spatial_dims"),
            classes=tuple(str(c) for c in card.get("classes") or ()),
            pixel_size=None if not px else tuple(float(v) for v in px),
            unit=None if card.get("unit") is None else str(card["unit"]), created=str(card.get("created") or ""),
            training_data=tuple(str(d) for d in card.get("training_data") or ()),
            metrics={str(k): float(v) for k, v in metrics.items() if isinstance(v, (int, float))},
            parent=None if card.get("parent") is None else str(card["parent"]),
            description=str(card.get("description") or ""))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise MedsegError(f"model library entry {folder}: its {CARD} cannot be read ({e})") from e


def _entry_dirs(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    except FileNotFoundError:
        return []
    except OSError as e:
        log.warning("model library %s cannot be read (%s)", folder, e.strerror or e)
        return []


def _entries(folders: Iterable[Path]) -> list[LibraryEntry]:
    seen: set[str] = set()
    out: list[LibraryEntry] = []
    for base in folders:
        for d in _entry_dirs(base):
            if not (d / CARD).is_file() or d.name in seen:  # not an entry, or hidden by one listed before
                continue
            try:
                entry = read_card(d)
            except MedsegError as e:
                log.warning("%s; skipped", e)
                continue
            seen.add(d.name)
            out.append(entry)
    return out


def list_models(folder: str | os.PathLike | None = None, *, channels: int | None = None,
                spatial_dims: int | None = None) -> list[LibraryEntry]:
    """The library's models (``folder``, else ``library_folders()``), newest first; with ``channels`` /
    ``spatial_dims`` only those that fit such an image (``LibraryEntry.fits``). Unreadable cards are skipped
    with a log warning, never an exception."""
    entries = [e for e in _entries(library_folders(folder)) if e.fits(channels, spatial_dims)]
    entries.sort(key=lambda e: e.name)
    entries.sort(key=lambda e: e.created, reverse=True)
    return entries


def _names(folders: Iterable[Path]) -> list[str]:
    return sorted({d.name for base in folders for d in _entry_dirs(base) if (d / CARD).is_file()})


def find(name_or_path: str | os.PathLike, folder: str | os.PathLike | None = None) -> Path:
    """The model file ``name_or_path`` stands for: an existing file or folder is itself; a library name is its
    entry's model file; anything else is a ``MedsegError`` naming the closest library names."""
    p = Path(name_or_path).expanduser()
    if p.exists():
        return p
    name = str(name_or_path)
    folders = library_folders(folder)
    if NAME_RE.match(name):
        for base in folders:
            if (base / name / CARD).is_file():
                return read_card(base / name).model_file
    names = _names(folders)
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    where = " and ".join(str(f) for f in folders)
    hint = (f"; did you mean {', '.join(close)}?" if close else
            f"; it holds {len(names)} model(s) (napari-medseg models list)" if names else "; it is empty")
    raise MedsegError(f"{name} does not exist: it is neither a file nor a model in the library ({where}){hint}")


def name_of(path: str | os.PathLike, folder: str | os.PathLike | None = None) -> str | None:
    """The library name of a model file (or its entry folder) inside a library folder, else None."""
    try:
        p = Path(path).expanduser().resolve()
        for base in library_folders(folder):
            b = base.expanduser().resolve()
            if b in p.parents:
                entry = b / p.relative_to(b).parts[0]
                if (entry / CARD).is_file():
                    return entry.name
    except (OSError, ValueError):
        return None
    return None


# -- adding --------------------------------------------------------------------------------------------------
def _copy_file(src: Path, dst: Path) -> None:
    """Copy one file (a module function so tests can make it fail)."""
    shutil.copyfile(src, dst)


def _copy_tree(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, copy_function=lambda s, d: _copy_file(Path(s), Path(d)))


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def checkpoint_metrics(meta: dict[str, Any]) -> dict[str, float]:
    """A checkpoint's validation metrics as plain numbers: ``mean_dice``; per-class ``val_dice`` as
    ``dice_<class>`` (foreground classes); per-class ``hd95`` as ``hd95_<class>`` and their mean ``hd95``."""
    out: dict[str, float] = {}
    for key in METRIC_KEYS:
        v = meta.get(key)
        if _finite(v):
            out[key] = float(v)
        elif isinstance(v, dict):
            per = {str(c): float(x) for c, x in v.items() if _finite(x)}
            if key == "val_dice":
                per.pop("background", None)
                out.update({f"dice_{c}": x for c, x in per.items()})
            else:
                out.update({f"{key}_{c}": x for c, x in per.items()})
                if per:
                    out[key] = sum(per.values()) / len(per)
    return out


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def _unique_name(name: str, taken: Sequence[str]) -> str:
    if name not in taken:
        return name
    n = 2
    while f"{name}-{n}" in taken:
        n += 1
    return f"{name}-{n}"


#: a hidden folder of an add or a remove older than this was left by a process that died
STALE_S = 3600.0


def _umask() -> int:
    """The process umask, read without changing it (``os.umask`` is not thread-safe); 0o022 if unknown."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    return 0o022


def _remove_stale(base: Path) -> None:
    now = time.time()
    for d in list(base.glob(".adding-*")) + list(base.glob(".removing-*")):
        with contextlib.suppress(OSError):
            if now - d.stat().st_mtime > STALE_S:
                shutil.rmtree(d, ignore_errors=True)


def _write_entry(name: str | None, default: str, card: dict[str, Any], fill, *, folder: str | os.PathLike | None,
                 overwrite: bool) -> LibraryEntry:
    """Build an entry in a hidden temporary folder (``fill(tmp)`` copies the model and returns its file name),
    write its card, then rename it into place; nothing is left behind when any step fails."""
    base = library_folders(folder)[0]
    wanted = check_name(name) if name else check_name(slug(default))
    try:
        base.mkdir(parents=True, exist_ok=True)
        _remove_stale(base)
        tmp = Path(tempfile.mkdtemp(prefix=f".adding-{wanted}.", dir=base))
        with contextlib.suppress(OSError):
            os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it owner-only; an entry is shared like any folder
    except OSError as e:
        raise MedsegError(f"cannot add to the model library {base} ({e.strerror or e}); is it read-only? Set "
                          f"{LIBRARY_ENV} to a writable folder") from e
    target: Path | None = None
    old: Path | None = None  # the entry replaced (overwrite), kept aside until the new one is in place
    try:
        card = {"format": CARD_FORMAT, "version": CARD_VERSION, **card, "model_file": fill(tmp)}
        (tmp / CARD).write_text(json.dumps(_clean(card), indent=1, allow_nan=False))
        taken = _names(library_folders(folder))
        final = wanted if overwrite else _unique_name(wanted, taken)
        for _ in range(100):  # another writer may take the name between the check and the rename
            target = base / final
            if overwrite and target.exists():
                old = base / f".removing-{final}.{os.getpid()}.{time.monotonic_ns()}"
                os.rename(target, old)
            try:
                os.rename(tmp, target)
                break
            except OSError:
                if overwrite or not target.exists():
                    raise
                taken = [*taken, *_names([base])]
                final = _unique_name(wanted, taken)
        else:  # pragma: no cover
            raise MedsegError(f"could not find a free name for {wanted!r} in {base}")
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and target is not None and not target.exists():
            with contextlib.suppress(OSError):
                os.rename(old, target)  # put the replaced entry back
        if isinstance(e, OSError):
            raise MedsegError(f"could not add {wanted!r} to the model library {base} ({e.strerror or e}); "
                              "nothing was added") from e
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    entry = read_card(target)
    log.info("added model %r to the library %s", entry.name, base)
    return entry


def _clean(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def add_checkpoint(ckpt_path: str | os.PathLike, name: str | None = None, *, folder: str | os.PathLike | None = None,
                   training_data: Sequence[str] = (), parent: str | None = None, description: str = "",
                   overwrite: bool = False) -> LibraryEntry:
    """Copy a napari-medseg checkpoint (``.pt`` and its ``.json``) into the library as ``name`` (default: the
    class names and the date, e.g. ``nucleus-stroma-20261204``; a taken name gets ``-2``, ``-3`` ... unless
    ``overwrite``). The card comes from the checkpoint: model config, classes, pixel size, unit, metrics,
    when it was saved, and ``meta["images"]`` / ``meta["parent"]`` unless given here."""
    from napari_medseg.models.checkpoint import load_checkpoint

    src = Path(ckpt_path)
    ck = load_checkpoint(src)  # refuses anything that is not a safe napari-medseg checkpoint
    m, mc = ck.meta, ck.model_config
    px = m.get("pixel_size")
    classes = tuple(ck.classes.names[1:])
    images = training_data or m.get("images") or ()
    card = {
        "kind": "checkpoint", "architecture": mc.name, "in_channels": mc.in_channels,
        "spatial_dims": mc.spatial_dims, "classes": list(classes),
        "pixel_size": [float(v) for v in px] if isinstance(px, (list, tuple)) and px else None,
        "unit": m.get("unit"), "created": str(m.get("saved") or _now()),
        "training_data": [str(d) for d in images], "metrics": checkpoint_metrics(m),
        "parent": parent if parent is not None else m.get("parent"),
        "description": description or str(m.get("description") or ""), "source": str(src),
    }

    def fill(tmp: Path) -> str:
        _copy_file(src, tmp / "model.pt")
        side = src.with_suffix(".json")
        if side.is_file():
            _copy_file(side, tmp / "model.json")
        else:
            (tmp / "model.json").write_text(json.dumps(ck.describe(), indent=1))
        return "model.pt"

    default = "-".join(slug(c) for c in classes[:3]) or mc.name
    return _write_entry(name, f"{default}-{time.strftime('%Y%m%d')}", card, fill, folder=folder,
                        overwrite=overwrite)


def add_file(path: str | os.PathLike, name: str | None = None, *, folder: str | os.PathLike | None = None,
             overwrite: bool = False, description: str = "") -> LibraryEntry:
    """Add any model file napari-medseg opens: a checkpoint (``add_checkpoint``), a bioimage.io package (a
    ``.zip`` copied as is, a folder copied whole; its ``rdf.yaml`` stands for its folder) or an ``.onnx`` /
    TorchScript file with its sidecar ``.json``. The card comes from ``describe_model_file``."""
    from napari_medseg.sharing.package_files import model_file_kind

    src = Path(path)
    if not src.exists():
        raise MedsegError(f"{src} does not exist")
    kind = model_file_kind(src)
    if kind is None:
        raise MedsegError(f"{src} is not a model file napari-medseg opens (a checkpoint .pt, a bioimage.io "
                          "package .zip or folder, or an .onnx / .ts file)")
    if kind == "checkpoint":
        return add_checkpoint(src, name, folder=folder, description=description, overwrite=overwrite)
    try:
        from napari_medseg.sharing.model_files import describe_model_file
    except ImportError as e:  # pragma: no cover - the sharing package without its import half
        raise MedsegError(f"{src}: only napari-medseg checkpoints can be added here ({e})") from e
    if kind == "bioimageio" and src.suffix.lower() in (".yaml", ".yml"):
        # copying the yaml's whole folder could copy a Downloads folder: the package must be named itself
        raise MedsegError(f"{src} is a package description: add the package's folder or .zip instead, so that "
                          "what is copied into the library is clear")
    info = describe_model_file(src)
    card = {"kind": kind, "architecture": info.architecture, "in_channels": info.in_channels,
            "spatial_dims": info.spatial_dims, "classes": list(info.classes),
            "pixel_size": list(info.pixel_size) if info.pixel_size else None, "unit": info.unit, "created": _now(),
            "training_data": [], "metrics": dict(info.metrics), "parent": None,
            "description": description or info.description, "source": str(Path(path))}

    def fill(tmp: Path) -> str:
        if kind == "bioimageio":
            if src.is_dir():
                _copy_tree(src, tmp / "package")
                return "package"
            _copy_file(src, tmp / "package.zip")
            return "package.zip"
        target = tmp / f"model{src.suffix.lower() or '.ts'}"
        _copy_file(src, target)
        side = src.with_suffix(".json")
        if side.is_file():
            _copy_file(side, target.with_suffix(".json"))
        return target.name

    return _write_entry(name, info.name or src.stem, card, fill, folder=folder, overwrite=overwrite)


def remove(name: str, folder: str | os.PathLike | None = None) -> None:
    """Delete the model ``name`` from the writable library folder (``folder``, else ``library_folder()``)."""
    check_name(name)
    folders = library_folders(folder)
    base = folders[0]
    entry = base / name
    if not (entry / CARD).is_file():
        ro = [f for f in folders[1:] if (f / name / CARD).is_file()]
        if ro:
            raise MedsegError(f"model {name!r} is in the read-only folder {ro[0]} ({EXTRA_ENV}); remove it there")
        close = difflib.get_close_matches(name, _names([base]), n=3, cutoff=0.5)
        raise MedsegError(f"no model {name!r} in the library {base}"
                          + (f"; did you mean {', '.join(close)}?" if close else ""))
    gone = base / f".removing-{name}.{os.getpid()}.{time.monotonic_ns()}"
    try:
        os.rename(entry, gone)  # disappears at once for every reader; the files go after
    except OSError as e:
        raise MedsegError(f"could not remove {name!r} from {base} ({e.strerror or e})") from e
    shutil.rmtree(gone, ignore_errors=True)
    log.info("removed model %r from the library %s", name, base)
