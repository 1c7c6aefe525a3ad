"""The consensus service: the ABCI 2.0 state machine behind CometBFT, and the relay of its events."""
