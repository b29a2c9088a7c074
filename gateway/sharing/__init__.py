"""Shareable image URLs: signed upload links, the store that keeps uploads for them."""
