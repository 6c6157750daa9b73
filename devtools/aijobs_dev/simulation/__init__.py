"""Deterministic simulation of the saga: the real engine against in-memory twins (developer tool)."""
