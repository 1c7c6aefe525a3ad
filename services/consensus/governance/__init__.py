"""Governance: the association's policy document, versioned on chain."""
