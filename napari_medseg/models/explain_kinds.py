"""The kinds of explanation map ``models.explain`` makes, importable without torch (the CLI parser and the
Predict widget list them before any model is loaded)."""

from __future__ import annotations

#: gradcam: any model; attention: attention-gate coefficients (attention_unet); transformer: the attention the
#: tokens of a transformer receive (rollout for global attention, within windows for Swin models)
KINDS = ("gradcam", "attention", "transformer")
