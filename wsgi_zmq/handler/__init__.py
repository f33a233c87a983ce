"""The handler side: worker processes that connect to fronts and run the WSGI app.

``worker`` (the worker loop and its sockets), ``wsgi`` (one request through the app),
``environ`` (the PEP 3333 environ, pure). Importing this package imports nothing heavy.
"""
