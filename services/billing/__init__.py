"""Billing: metering, price models, statements; settlement itself executes on chain."""
