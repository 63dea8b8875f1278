"""The trial config: a frozen, JSON-safe mapping that is the single source of truth for one trial.

The same config rebuilds the model (``nas_flex.models.build``), is stored in the leaderboard row, and is what export
starts from. Its keys, defaults and checks are described once, in ``nas_flex.config`` (torch-free); this module
keeps their public names where users import them from.
"""

from __future__ import annotations

from nas_flex.config import DEFAULTS, KEY_DOCS, TrialConfig, canonical_key, resolve_config

__all__ = ["DEFAULTS", "KEY_DOCS", "TrialConfig", "resolve_config", "canonical_key"]
