"""A synthetic two-modality image whose class needs both modalities: "bright in channel 0 AND bright in channel 1".

Each modality shows its own set of discs; every class region is the overlap (a lens) of a channel-0 disc and a
channel-1 disc placed next to it, and the rest of each disc is a decoy. A model that sees one channel only
cannot tell the overlap from the decoy (its best Dice is about 2|A&B| / (|A| + |A&B|), under 0.7 here), one that
uses both can (Dice near 1). ``contrast="different"`` makes the modalities look unlike each other (CT+MRI,
T1+T2): channel 1's structures are *darker* than its background, on another intensity scale, with more noise
and a smooth bias field, the variant on which early fusion (channels into one encoder) and late fusion
(``fusion_unet``) are compared (docs/multimodal.md).
"""

from __future__ import annotations

import numpy as np

CONTRASTS = ("same", "different")


def _discs(shape: tuple[int, ...], centres: np.ndarray, radius: np.ndarray) -> np.ndarray:
    grid = np.indices(shape, dtype=np.float32)
    out = np.zeros(shape, bool)
    for c, r in zip(centres, radius):
        d2 = sum((g - float(ci)) ** 2 for g, ci in zip(grid, c))
        out |= d2 <= float(r) ** 2
    return out


def two_modality_and(shape: tuple[int, ...] = (96, 96), n_pairs: int = 5, seed: int = 0,
                     contrast: str = "same", noise: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    """``(image, labels)``: image ``(2, *shape)`` float32, labels ``shape`` uint8 (1 where both channels are bright).

    ``shape``: 2D ``(Y, X)`` or 3D ``(Z, Y, X)``; ``n_pairs`` channel-0/channel-1 disc pairs (each overlapping
    by about 40 % of a disc) plus as many lone discs per channel; ``contrast``: ``"same"`` or ``"different"``."""
    if contrast not in CONTRASTS:
        raise ValueError(f"contrast must be one of {CONTRASTS}, got {contrast!r}")
    rng = np.random.default_rng(seed)
    nd = len(shape)
    side = min(shape)
    r = rng.uniform(0.07, 0.11, n_pairs) * side
    c0 = rng.uniform(0.15, 0.85, (n_pairs, nd)) * np.array(shape)
    direction = rng.normal(size=(n_pairs, nd))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    c1 = c0 + direction * r[:, None] * 1.1  # centres 1.1 r apart: the lens is ~40 % of a disc
    lone = [rng.uniform(0.1, 0.9, (n_pairs, nd)) * np.array(shape) for _ in range(2)]
    lone_r = [rng.uniform(0.06, 0.1, n_pairs) * side for _ in range(2)]
    a = _discs(shape, np.concatenate([c0, lone[0]]), np.concatenate([r, lone_r[0]]))
    b = _discs(shape, np.concatenate([c1, lone[1]]), np.concatenate([r, lone_r[1]]))
    ch0 = a.astype(np.float32) + rng.normal(0, noise, shape).astype(np.float32)
    ch1 = b.astype(np.float32) + rng.normal(0, noise, shape).astype(np.float32)
    if contrast == "different":
        ramp = np.linspace(-1.0, 1.0, shape[-1], dtype=np.float32)
        bias = 0.3 * np.broadcast_to(ramp, shape)
        ch1 = (800.0 - 300.0 * (b + rng.normal(0, 2 * noise, shape) + bias)).astype(np.float32)
    return np.stack([ch0, ch1]).astype(np.float32), (a & b).astype(np.uint8)
