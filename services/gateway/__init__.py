"""Gateway: the single door for member systems and association portals."""
