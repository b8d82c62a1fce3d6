"""The orders app: the Order model, its saga, a view and a command that place orders."""
