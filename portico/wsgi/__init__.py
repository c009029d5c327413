"""The WSGI layer: PEP 3333 apps run inside portico workers."""
