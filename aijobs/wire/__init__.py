"""How the parts talk to each other: the inter-service HTTP client and its service tokens.
Imported by the operator, the worker and Main API; it needs httpx and PyJWT, nothing of FastAPI."""
