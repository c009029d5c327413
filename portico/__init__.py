"""portico: a web front server (nginx's role) and WSGI server (gunicorn's role) in one program."""

__version__ = "0.1.0"
