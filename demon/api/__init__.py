"""The daemon's HTTP API (``/api/v1/``): see docs/api.md."""
