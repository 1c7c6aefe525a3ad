"""What every service shares: wire contracts, identity and signing, and the service chassis.

Nothing here knows about a particular service; a service never imports another one.
"""
