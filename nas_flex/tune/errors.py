"""The tuner's errors (both ``NasFlexError``\\ s, raised before Ray starts)."""

from __future__ import annotations

from nas_flex.errors import NasFlexError, StorageError

__all__ = ["ResourceError", "StorageError"]


class ResourceError(NasFlexError, RuntimeError):
    """A trial asks for resources the cluster does not have (Ray would leave it pending forever)."""
