"""python -m wsgi_zmq.front: the HTTP front and broker alone."""

from wsgi_zmq.cli import main_front

if __name__ == "__main__":
    main_front()
