"""The hub's REST API (FastAPI) under ``/api/v1``."""
