"""The class schema: names and colors of the label classes, shared by the label store, the training
targets, the live preview and the prediction output.

Label store values: 0 = not annotated (ignored by training), 1 = background, 2.. = classes.
Model outputs and predictions: channel / value 0 = background, k = the k-th class (store value k + 1).
A class keeps the same color in every layer: ``store_colors()`` and ``prediction_colors()`` give the
value -> RGBA maps for the two value conventions.

Object classes (``objects``): classes whose connected regions are objects to count and measure (nuclei,
cells, lesions). A schema with object classes usually also holds the class ``BOUNDARY`` ("object
boundary"): the rim of each painted object, derived automatically from the painting for training
(``napari_medseg.objects.boundaries``), which the model learns so that touching objects can be told apart.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from napari_medseg.core.errors import MedsegError

# Colour-blind-friendly defaults (Okabe-Ito / Tol), background a muted grey.
DEFAULT_COLORS = ["#9e9e9e", "#e69f00", "#56b4e9", "#009e73", "#f0e442", "#0072b2", "#d55e00", "#cc79a7",
                  "#882255", "#44aa99", "#117733", "#332288"]
UNANNOTATED = 0
BACKGROUND = 1
BOUNDARY = "object boundary"
BOUNDARY_COLOR = "#ffffff"


def hex_to_rgba(color: str, alpha: float = 1.0) -> tuple[float, float, float, float]:
    c = color.lstrip("#")
    if len(c) not in (6, 8) or any(ch not in "0123456789abcdefABCDEF" for ch in c):
        raise MedsegError(f"color {color!r} is not a hex color like '#ff8800'")
    r, g, b = (int(c[i:i + 2], 16) / 255 for i in (0, 2, 4))
    a = int(c[6:8], 16) / 255 if len(c) == 8 else alpha
    return (r, g, b, a)


@dataclass(frozen=True)
class ClassSchema:
    """Class names including background first: ``names[0]`` is the background class."""

    names: tuple[str, ...] = ("background", "foreground")
    colors: tuple[str, ...] = field(default=())
    objects: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if len(self.names) < 2:
            raise MedsegError("a class schema needs background and at least one class")
        if len(set(self.names)) != len(self.names):
            raise MedsegError(f"class names must be unique, got {list(self.names)}")
        if len(self.names) > 254:
            raise MedsegError("at most 254 classes fit in uint8 labels")
        colors = tuple(self.colors) or tuple(DEFAULT_COLORS[i % len(DEFAULT_COLORS)] for i in range(len(self.names)))
        if len(colors) != len(self.names):
            raise MedsegError(f"{len(self.names)} class names but {len(colors)} colors")
        for c in colors:
            hex_to_rgba(c)
        object.__setattr__(self, "names", tuple(self.names))
        object.__setattr__(self, "colors", colors)
        objects = tuple(str(o) for o in self.objects)
        for o in objects:
            if o not in self.names:
                raise MedsegError(f"object class {o!r} is not one of the classes {list(self.names)}")
            if o in (self.names[0], BOUNDARY):
                raise MedsegError(f"{o!r} cannot be an object class (it is the background or the boundary class)")
        if len(set(objects)) != len(objects):
            raise MedsegError(f"object classes must be unique, got {list(objects)}")
        object.__setattr__(self, "objects", objects)

    def with_objects(self, objects: tuple[str, ...] | list[str], boundary: bool = True) -> ClassSchema:
        """This schema with ``objects`` as its object classes and, when ``boundary``, the class ``BOUNDARY``
        appended if it is missing. The other classes keep their values."""
        names, colors = self.names, self.colors
        if boundary and objects and BOUNDARY not in names:
            names, colors = names + (BOUNDARY,), colors + (BOUNDARY_COLOR,)
        return ClassSchema(names=names, colors=colors, objects=tuple(objects))

    @property
    def object_values(self) -> tuple[int, ...]:
        """Prediction values (model channels) of the object classes."""
        return tuple(self.names.index(o) for o in self.objects)

    @property
    def boundary_value(self) -> int | None:
        """Prediction value of the ``BOUNDARY`` class when the schema has object classes and that class."""
        return self.names.index(BOUNDARY) if self.objects and BOUNDARY in self.names else None

    @classmethod
    def default(cls, n: int) -> ClassSchema:
        """The schema of ``n`` model output channels when nothing names them: ``background``, ``class 1`` ..
        ``class n-1``, default colors. ``n`` counts background (at least 2)."""
        return cls(names=("background",) + tuple(f"class {i}" for i in range(1, n)))

    @property
    def n_classes(self) -> int:
        """Number of model output channels (background included)."""
        return len(self.names)

    @property
    def max_store_value(self) -> int:
        return len(self.names)  # background is 1, last class is len(names)

    def store_colors(self, alpha: float = 0.7) -> dict[int | None, tuple[float, float, float, float]]:
        """value -> RGBA for label-store values (0 transparent, 1 background, 2.. classes)."""
        m: dict[int | None, tuple[float, float, float, float]] = {0: (0, 0, 0, 0), None: (0, 0, 0, 0)}
        for i, c in enumerate(self.colors):
            m[i + 1] = hex_to_rgba(c, alpha * (0.5 if i == 0 else 1.0))
        return m

    def prediction_colors(self, alpha: float = 0.7) -> dict[int | None, tuple[float, float, float, float]]:
        """value -> RGBA for predictions (0 = background, transparent; k = class k)."""
        m: dict[int | None, tuple[float, float, float, float]] = {0: (0, 0, 0, 0), None: (0, 0, 0, 0)}
        for i, c in enumerate(self.colors[1:], start=1):
            m[i] = hex_to_rgba(c, alpha)
        return m

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"names": list(self.names), "colors": list(self.colors)}
        if self.objects:
            d["objects"] = list(self.objects)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClassSchema:
        if not isinstance(d, dict) or not isinstance(d.get("names"), list):
            raise MedsegError("a class schema must be a mapping with a list of 'names'")
        objects = d.get("objects", [])
        if not isinstance(objects, list):
            raise MedsegError("a class schema's 'objects' must be a list of class names")
        return cls(names=tuple(str(n) for n in d["names"]), colors=tuple(str(c) for c in d.get("colors", [])),
                   objects=tuple(str(o) for o in objects))

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, s: str) -> ClassSchema:
        return cls.from_dict(json.loads(s))
