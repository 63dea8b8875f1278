"""Training and metering of one trial (no Ray here)."""
