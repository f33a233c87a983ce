"""python -m wsgi_zmq.handler APP: a pool of handler workers for APP."""

from wsgi_zmq.cli import main_handler

if __name__ == "__main__":
    main_handler()
