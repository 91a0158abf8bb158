"""Ants/bees/cats/dogs classifier: a DVC pipeline around a frozen ImageNet backbone."""
