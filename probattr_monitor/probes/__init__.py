"""Probe sets: the fixed, reasonable prompts the monitor scores."""
