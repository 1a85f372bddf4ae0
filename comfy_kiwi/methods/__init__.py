"""Editing methods that adapt a base Wan DiT without changing its weights or key layout."""
