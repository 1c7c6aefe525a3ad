"""Validators: the chain's validator set, changed by the association's board and returned to
CometBFT as validator updates."""
