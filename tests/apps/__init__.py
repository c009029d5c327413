"""Real WSGI apps for the integration tests: Flask apps and plain PEP 3333 callables.

Each module exposes ``app`` and ``validated = validator(app)`` (``wsgiref.validate``:
any breach of PEP 3333 by the server raises an AssertionError in the worker, which a
test sees as a 500 and an ``AssertionError`` in the error log). Modules with both a
Flask app and a plain callable name the second ``plain`` (and ``plain_validated``).

Paths the apps need come from the config, through ``wsgi_env``: ``DATA_FILE`` (a file
to send) and ``CLOSE_LOG`` (where iterables record that their ``close()`` ran).
"""
