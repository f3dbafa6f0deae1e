"""The fuzz suite over purelearn's public surface (see registry.py)."""
