"""Tool integrity: pinning definitions against rug pulls, and scanning metadata for poisoning."""
