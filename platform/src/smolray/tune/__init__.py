"""Mixture sweeps: proxy runs of a recipe over mixtures drawn from a space."""
