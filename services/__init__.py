"""The rdx services. Each subpackage is its own process and imports only itself and ``common``."""
