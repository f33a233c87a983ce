"""python -m wsgi_zmq APP: a front and a handler pool under one supervisor."""

from wsgi_zmq.cli import main_all

if __name__ == "__main__":
    main_all()
