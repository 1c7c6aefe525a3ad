"""Access: requests, approvals, rejections, revocations and expiry of grants. Jobs check grants."""
