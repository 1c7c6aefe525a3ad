"""Audit anchors: the digest of each batch of gateway audit records, so tampering is detectable."""
