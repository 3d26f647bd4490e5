"""Pictures: reconstructions, curves."""
