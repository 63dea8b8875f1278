"""The tuner's errors (both ``NasFlexError``\\ s, raised before Ray starts); defined in ``nas_flex.errors``."""

from __future__ import annotations

from nas_flex.errors import ResourceError, StorageError

__all__ = ["ResourceError", "StorageError"]
