"""Text encoders of the Wan text path (umT5)."""
