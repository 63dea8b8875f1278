"""Pure kernel builders (no state, torch only): Gaussian bases, envelopes and masks, frequency grids."""
