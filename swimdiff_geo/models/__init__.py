"""Placeholder: filled by the training-side work."""
