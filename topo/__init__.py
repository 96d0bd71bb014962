"""Mininet topologies (the seed's, the patch panel) and the one-command lab."""
