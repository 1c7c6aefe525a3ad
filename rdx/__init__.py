"""rdx developer and member tooling: installs the real components, runs the exchange locally.

The exchange itself lives in ``services/``; this package only builds, starts and watches it.
"""
