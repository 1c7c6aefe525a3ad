"""The portal: server-rendered pages for the members' people and the association's staff, in Chinese and
English, signed in through OIDC; it reaches the exchange only through the gateway's HTTP API."""
