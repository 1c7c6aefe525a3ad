"""Bank: association-issued credits, balances, job escrow, settlement and refunds."""
