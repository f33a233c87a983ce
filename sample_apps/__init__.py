"""Sample applications served by wsgi_zmq: Flask, Django, plain WSGI and a job function.

See ``sample_apps/README.md`` for how to run each one. Nothing here depends on wsgi_zmq: the
apps are ordinary WSGI callables that any WSGI server could run.
"""
