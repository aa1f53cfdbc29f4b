"""Validation: finding and repairing drift between the store and git."""
