"""Export a checkpoint as a bioimage.io model package (model spec 0.5, written with ``bioimageio.spec``).

The zip holds: the weights as a PyTorch state dict whose architecture is
``napari_medseg.models.build_model_from_dict`` (its keyword arguments are the model config), as TorchScript and
as ONNX (each checked against PyTorch by ``models.export``); ``rdf.yaml`` with named axes (``batch``,
``channel``, ``z``/``y``/``x``) and the pixel size of the level the model was trained at; the normalisation as
preprocessing steps (``NormConfig.to_steps``: per channel ``scale_linear`` then ``clip``, exactly what
napari-medseg computes, for the range, percentile and CT-window modes alike); a softmax as postprocessing, so
the output is class probabilities named after the classes; a test input (a crop of the user's image when
given) and the output napari-medseg computes for it; a cover (the test input beside its prediction); a
README with data, metrics and intended use; and the checkpoint's full description under
``config.napari_medseg`` (classes with colors and object classes, normalisation, training run), so importing
the package back into napari-medseg loses nothing.

``run_test`` (default) runs ``bioimageio.core.test_model`` on the written zip, offline: every weights format
must reproduce the test output. The result and its log come back in :class:`ExportedPackage`.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from napari_medseg.core.errors import MedsegError
from napari_medseg.sharing.bioimageio_import import ARCH_CALLABLE, ARCH_MODULE, CONFIG_KEY, SPACE

log = logging.getLogger(__name__)
FORMATS = ("pytorch_state_dict", "torchscript", "onnx")
_UNITS = {1e-9: "nanometer", 1e-6: "micrometer", 1e-3: "millimeter", 1e-2: "centimeter", 1.0: "meter"}


@dataclass(frozen=True)
class ExportedPackage:
    path: Path
    formats: tuple[str, ...]
    test_passed: bool | None  # None: not tested
    test_log: str

    def __fspath__(self) -> str:
        return os.fspath(self.path)


def _unit(unit: str | None) -> str | None:
    from napari_medseg.io.lazy import unit_to_meter

    m = unit_to_meter(unit)
    return next((name for v, name in _UNITS.items() if m is not None and abs(m - v) <= 1e-6 * v), None)


_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_+- ()")


def package_name(name: str) -> str:
    """``name`` in the characters bioimage.io allows in a model name (5 to 128 of them): ``&`` becomes
    ``and``, other characters a space (the README keeps the name as given)."""
    s = " ".join("".join(c if c in _NAME_CHARS else " " for c in name.replace("&", " and ")).split())
    if len(s) < 5:
        s = f"napari-medseg {s}".strip()
    return s[:128].rstrip()


def _identifier(name: str, used: set[str]) -> str:
    """A bioimage.io identifier (letters, digits, _) made from a class name, unique among ``used``."""
    s = "".join(c if c.isalnum() else "_" for c in name.strip().lower()).strip("_") or "class"
    if s[0].isdigit():
        s = f"c{s}"
    base, k = s, 2
    while s in used:
        s, k = f"{base}_{k}", k + 1
    used.add(s)
    return s


def _test_input(ckpt, sizes: tuple[int, ...], image: np.ndarray | None) -> np.ndarray:
    """(1, C, *sizes) float32 raw pixels: the middle of ``image`` (C, *spatial), padded by reflection where it
    is smaller, or random values spanning the normalisation's range."""
    c = ckpt.model_config.in_channels
    if image is None:
        g = np.random.default_rng(0)
        lo = np.array(ckpt.norm.low if ckpt.norm.mode != "steps" else [0.0] * c, np.float32)
        hi = np.array(ckpt.norm.high if ckpt.norm.mode != "steps" else [1.0] * c, np.float32)
        lo, hi = np.resize(lo, c), np.resize(hi, c)
        r = g.random((c, *sizes), dtype=np.float32)
        return (lo.reshape((c,) + (1,) * len(sizes)) + r * (hi - lo).reshape((c,) + (1,) * len(sizes)))[None]
    a = np.asarray(image, dtype=np.float32)
    if a.ndim != len(sizes) + 1 or a.shape[0] != c:
        raise MedsegError(f"the test image must be (C={c}, {len(sizes)} spatial axes), got shape {a.shape}")
    sl, pads = [slice(None)], [(0, 0)]
    for n, s in zip(a.shape[1:], sizes):
        start = max(0, (n - s) // 2)
        sl.append(slice(start, start + s))
        pads.append((0, max(0, s - n)))
    a = a[tuple(sl)]
    if any(p[1] for p in pads):
        a = np.pad(a, pads, mode="reflect" if all(n > 1 for n in a.shape[1:]) else "edge")
    return np.ascontiguousarray(a[None])


def _predict_test(model: torch.nn.Module, norm, x: np.ndarray) -> np.ndarray:
    """What bioimage.io's pipeline computes: the preprocessing steps, the model, a softmax over channels."""
    from napari_medseg.models.preprocessing import apply_steps

    with torch.no_grad():
        t = apply_steps(torch.from_numpy(x), norm.to_steps())
        return torch.softmax(model(t).float(), dim=1).numpy()


def _sizes(cfg, size: int | None) -> tuple[int, ...]:
    from napari_medseg.models.registry import valid_size

    s = size if size is not None else (128 if cfg.spatial_dims == 2 else 64)
    return (valid_size(cfg, int(s)),) * cfg.spatial_dims


def export_bioimageio(checkpoint: str | os.PathLike, out: str | os.PathLike, *, name: str | None = None,
                      description: str | None = None, authors: Sequence[str] = (), license: str = "CC-BY-4.0",
                      formats: Sequence[str] = FORMATS, test_image: np.ndarray | None = None,
                      cover_image: np.ndarray | None = None, size: int | None = None, run_test: bool = True,
                      teacher: bool | None = None, on_progress: Callable[[str], None] | None = None
                      ) -> ExportedPackage:
    """Write ``checkpoint`` as a bioimage.io package ``out`` (``.zip``); see the module doc.

    ``test_image``: raw pixels ``(C, *spatial)`` of the user's image (a crop of it becomes the test input and
    the cover); ``cover_image``: an RGB ``(H, W, 3)`` uint8 picture to use as the cover instead; ``size``: the
    test input's side (default 128 in 2D, 64 in 3D; the Swin models' graphs are fixed to it).
    """
    from napari_medseg.models.checkpoint import load_model
    from napari_medseg.models.export import export_onnx, export_torchscript, supports_dynamic_spatial

    say = on_progress or (lambda s: log.info("%s", s))
    fmts = tuple(dict.fromkeys(formats))
    bad = [f for f in fmts if f not in FORMATS]
    if bad or "pytorch_state_dict" not in fmts:
        raise MedsegError(f"bioimage.io export formats are {', '.join(FORMATS)} (the state dict always); got {bad or fmts}")
    out = Path(out)
    if out.suffix.lower() != ".zip":
        out = out.with_suffix(".zip")
    say("loading the checkpoint")
    model, ckpt = load_model(checkpoint, device="cpu", teacher=teacher)
    cfg = ckpt.model_config
    sizes = _sizes(cfg, size)
    dynamic = supports_dynamic_spatial(model)
    x = _test_input(ckpt, sizes, test_image)
    y = _predict_test(model, ckpt.norm, x)
    name = name or str(ckpt.meta.get("name") or Path(checkpoint).stem)
    description = description or (f"napari-medseg {cfg.name} ({cfg.spatial_dims}D) segmenting "
                                  f"{', '.join(ckpt.classes.names[1:])}")
    with tempfile.TemporaryDirectory(prefix="medseg-bioimageio-") as tmp:
        d = Path(tmp)
        np.save(d / "test_input.npy", x)
        np.save(d / "test_output.npy", y)
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, d / "weights.pt")
        example = torch.from_numpy(x)
        if "torchscript" in fmts:
            say("writing TorchScript (checked against PyTorch)")
            export_torchscript(model, example, d / "weights.ts")
        if "onnx" in fmts:
            say("writing ONNX (checked against PyTorch with onnxruntime)")
            export_onnx(model, example, d / "weights.onnx")
        from napari_medseg.sharing.package_card import cover

        labels = y[0].argmax(0)
        img = x[0]
        if cfg.spatial_dims == 3:
            mid = sizes[0] // 2
            img, labels = img[:, mid], labels[mid]
        pic = cover_image if cover_image is not None else cover(img, labels, ckpt.classes)
        _write_cover(d / "cover.png", pic)
        say("describing the package")
        descr = _describe(ckpt, d, fmts, sizes, dynamic, package_name(name), description, authors, license,
                          title=name)
        from bioimageio.spec import save_bioimageio_package

        out.parent.mkdir(parents=True, exist_ok=True)
        tmp_out = out.with_name(f".{out.name}.tmp")
        try:
            save_bioimageio_package(descr, output_path=tmp_out)
            os.replace(tmp_out, out)
        except Exception as e:
            tmp_out.unlink(missing_ok=True)
            raise MedsegError(f"could not write the bioimage.io package {out} ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:300]})") from e
    passed, text = None, ""
    if run_test:
        say("testing the package with bioimageio.core (every weights format)")
        passed, text = test_package(out)
    say(f"wrote {out}" + ("" if passed is None else (" (test passed)" if passed else " (TEST FAILED)")))
    return ExportedPackage(out, fmts, passed, text)


def _write_cover(path: Path, pic: np.ndarray) -> None:
    import imageio.v3 as iio

    a = np.asarray(pic)
    if a.ndim != 3 or a.shape[2] not in (3, 4) or a.dtype != np.uint8:
        raise MedsegError(f"a cover must be an RGB(A) uint8 picture (H, W, 3), got {a.dtype} {a.shape}")
    iio.imwrite(path, a)


def test_package(path: str | os.PathLike) -> tuple[bool, str]:
    """Run ``bioimageio.core.test_model`` on a package: (passed, one line per check)."""
    from bioimageio.core import test_model

    summary = test_model(Path(path))
    lines = [f"{d.status}: {d.name}" + "".join(f"\n    {e.msg}" for e in (d.errors or [])) for d in summary.details]
    return summary.status == "passed", "\n".join(lines)


def _describe(ckpt, d: Path, fmts: tuple[str, ...], sizes: tuple[int, ...], dynamic: bool, name: str,
              description: str, authors: Sequence[str], license: str, title: str):
    from bioimageio.spec.model import v0_5 as b

    from napari_medseg.models.registry import min_input_size, required_multiple
    from napari_medseg.sharing.package_card import citations, readme

    cfg, m = ckpt.model_config, ckpt.meta
    px = m.get("pixel_size") or []
    unit = _unit(m.get("unit"))
    axes_ids = SPACE[3 - cfg.spatial_dims:]
    scales = [float(v) for v in px][-cfg.spatial_dims:] if unit and len(px) >= cfg.spatial_dims else None
    size = b.ParameterizedSize(min=min_input_size(cfg), step=required_multiple(cfg)) if dynamic else None

    def space_in(i: int, a: str):
        kw = {"scale": scales[i], "unit": unit} if scales else {}
        return b.SpaceInputAxis(id=b.AxisId(a), size=size if size is not None else sizes[i], **kw)

    def space_out(i: int, a: str):
        kw = {"scale": scales[i], "unit": unit} if scales else {}
        return b.SpaceOutputAxis(id=b.AxisId(a), size=b.SizeReference(tensor_id=b.TensorId("image"),
                                                                       axis_id=b.AxisId(a)), **kw)

    rgb = bool(m.get("rgb")) and cfg.in_channels == 3
    in_names = ["red", "green", "blue"] if rgb else [f"channel{i}" for i in range(cfg.in_channels)]
    used: set[str] = set()
    out_names = [_identifier(n, used) for n in ckpt.classes.names]
    steps = [_step(b, s) for s in ckpt.norm.to_steps()]
    inp = b.InputTensorDescr(
        id=b.TensorId("image"), description="raw pixels; the preprocessing normalises them",
        axes=[b.BatchAxis(), b.ChannelAxis(channel_names=[b.Identifier(c) for c in in_names]),
              *(space_in(i, a) for i, a in enumerate(axes_ids))],
        test_tensor=b.FileDescr(source=d / "test_input.npy"), data=b.IntervalOrRatioDataDescr(type="float32"),
        preprocessing=steps)
    outp = b.OutputTensorDescr(
        id=b.TensorId("probabilities"), description="class probabilities (softmax over the channel axis)",
        axes=[b.BatchAxis(), b.ChannelAxis(channel_names=[b.Identifier(c) for c in out_names]),
              *(space_out(i, a) for i, a in enumerate(axes_ids))],
        test_tensor=b.FileDescr(source=d / "test_output.npy"), data=b.IntervalOrRatioDataDescr(type="float32"),
        postprocessing=[b.SoftmaxDescr(kwargs=b.SoftmaxKwargs(axis=b.AxisId("channel")))])
    tv = b.Version(torch.__version__.split("+")[0])
    w = {"pytorch_state_dict": b.PytorchStateDictWeightsDescr(
        source=d / "weights.pt", pytorch_version=tv,
        architecture=b.ArchitectureFromLibraryDescr(import_from=ARCH_MODULE, callable=b.Identifier(ARCH_CALLABLE),
                                                    kwargs=cfg.to_dict()))}
    if "torchscript" in fmts:
        w["torchscript"] = b.TorchscriptWeightsDescr(source=d / "weights.ts", pytorch_version=tv,
                                                     parent="pytorch_state_dict")
    if "onnx" in fmts:
        w["onnx"] = b.OnnxWeightsDescr(source=d / "weights.onnx", opset_version=17, parent="pytorch_state_dict")
    pixel = (f"{' x '.join(f'{s:g}' for s in scales)} {unit} ({''.join(axes_ids).upper()})" if scales
             else "not recorded (pixels)")
    (d / "README.md").write_text(readme(ckpt, name=title, description=description, pixel=pixel, formats=fmts,
                                        test_size=sizes))
    metrics = {k: m[k] for k in ("val_dice", "mean_dice", "mean_iou", "hd95") if isinstance(m.get(k), (int, float))}
    try:
        return b.ModelDescr(
            name=name, description=description, authors=[b.Author(name=a) for a in (authors or ["napari-medseg user"])],
            cite=[b.CiteEntry(text=t, doi=b.Doi(doi) if doi else None, url=url) for t, doi, url in citations(cfg.name)],
            license=b.LicenseId(license), documentation=b.FileDescr(source=d / "README.md"),
            covers=[b.FileDescr(source=d / "cover.png")], inputs=[inp], outputs=[outp],
            weights=b.WeightsDescr(**w), tags=["segmentation", "napari-medseg", f"{cfg.spatial_dims}d", cfg.name],
            config=b.Config(**{CONFIG_KEY: ckpt.describe() | {"metrics": metrics}}))
    except Exception as e:
        errs = getattr(e, "errors", None)
        detail = ("; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in errs()[:3]) if callable(errs)
                  else str(e).splitlines()[0][:300])
        raise MedsegError(f"the bioimage.io description is invalid: {detail}") from e


def _step(b, s: dict):
    kw = dict(s["kwargs"])
    if s["id"] == "clip":
        return b.ClipDescr(kwargs=b.ClipKwargs(**kw))
    if s["id"] == "scale_linear":
        if "axis" in kw:
            return b.ScaleLinearDescr(kwargs=b.ScaleLinearAlongAxisKwargs(axis=b.AxisId(kw["axis"]), gain=kw["gain"],
                                                                          offset=kw["offset"]))
        return b.ScaleLinearDescr(kwargs=b.ScaleLinearKwargs(gain=kw["gain"], offset=kw["offset"]))
    raise MedsegError(f"the preprocessing step {s['id']!r} of this model cannot be exported yet")


def image_crop(source, checkpoint: str | os.PathLike, side: int = 256) -> np.ndarray:
    """Raw pixels ``(C, *spatial)`` from the middle of ``source`` (an ``ImageSource``) at the pixel size the
    checkpoint was trained at: the test input and cover of its package (the middle slice for a 2D model on a
    volume)."""
    from napari_medseg.core.source import read_box
    from napari_medseg.models.checkpoint import load_checkpoint

    ck = load_checkpoint(checkpoint)
    md = ck.model_config.spatial_dims
    if source.n_channels != ck.model_config.in_channels:
        raise MedsegError(f"the image has {source.n_channels} channel(s), the model takes "
                          f"{ck.model_config.in_channels}; choose an image like the training data")
    if md > source.spatial_dims:
        raise MedsegError(f"a {md}D model needs a {md}D image for its test input")
    px = ck.meta.get("pixel_size")
    level = source.level_for_pixel_size(float(min(px))) if px else int(ck.meta.get("level", 0) or 0)
    level = min(max(0, level), len(source.levels) - 1)
    shape = source.level_shape(level)
    box = []
    for i, n in enumerate(shape):
        s = side if i >= len(shape) - md else 1
        a = max(0, (n - s) // 2)
        box.append((a, min(n, a + s)))
    a = read_box(source, level, box, pad=None)
    return a[(slice(None),) + (0,) * (len(shape) - md)] if len(shape) > md else a
