"""Compute: a member's privacy-computing node; its data never leaves it raw."""
