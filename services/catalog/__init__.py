"""Catalog: the searchable read model of data listings, and listing drafts' validation."""
