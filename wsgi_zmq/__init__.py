"""wsgi_zmq: run any WSGI application behind ZeroMQ.

A gevent HTTP front (``python -m wsgi_zmq.front``) accepts the connections; handler pools
(``python -m wsgi_zmq.handler APP``) connect to it from this host or any other and serve the
requests; ``python -m wsgi_zmq APP`` runs both under one supervisor.

This package imports neither gevent nor zmq: the supervisor forks, and no hub or zmq context
may exist in a parent before its children are forked.
"""

__version__ = "0.5.0"
