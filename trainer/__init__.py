"""comfy-kiwi trainer: run from the checkout as ``python -m trainer ...``."""
