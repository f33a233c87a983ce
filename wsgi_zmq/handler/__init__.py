"""The handler side: worker processes that connect to fronts and run a WSGI app or a job.

``worker`` (the worker core: sockets, records, credit, draining; the ``Runner`` and
``Layer`` interfaces), the runners ``sync`` (in order, batched) and ``green`` (gevent, at
once), the layers ``wsgi`` (one request through a WSGI app) and ``job`` (one job through a
function), ``environ`` (the PEP 3333 environ, pure). Importing this package imports
nothing heavy.
"""
