"""Members: who belongs to the exchange, their roles, their signing keys and compute nodes."""
