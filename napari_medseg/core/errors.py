"""Errors a user can cause with their input. Each message says what was wrong and what to do."""

from __future__ import annotations


class MedsegError(Exception):
    """Base of every error napari-medseg raises on purpose (bad input, bad config, refused action)."""


class UnreadableInputError(MedsegError):
    """A file the plugin accepts (by name or content) but cannot read; the message names the file and why."""


class GeometryMismatchError(MedsegError):
    """Two arrays that must share a geometry (image and labels, store and image) do not."""


class StoreLockedError(MedsegError):
    """A label store or an output is in use by another process."""
