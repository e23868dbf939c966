"""Reconstruction: the forward model, phantoms, simulator, representations and the optimisation loop (torch and numpy only)."""
