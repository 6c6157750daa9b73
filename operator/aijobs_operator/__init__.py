"""Filled in by later stages; see the README."""
