"""Exact versions of the external components rdx runs. One place, so caches are keyed by them."""

KAFKA_VERSION = "4.1.1"
# kafka_2.13 4.x declares slf4j-api 1.7 but no binding; log4j's bridge lets the broker log to a file.
LOG4J_VERSION = "2.24.3"
# Newest v0.38 patch. Not @latest: that resolves to the abandoned v1 line.
COMETBFT_VERSION = "v0.38.26"
# The gogoproto module CometBFT v0.38.26's go.mod requires (for gogoproto/gogo.proto).
GOGOPROTO_VERSION = "v1.7.0"
