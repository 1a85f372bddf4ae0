"""Kiwi-Edit training numerics and checkpoint export."""
