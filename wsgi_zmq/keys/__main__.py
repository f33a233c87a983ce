"""python -m wsgi_zmq.keys: generate and show CurveZMQ key pairs."""

from wsgi_zmq.keys import main

if __name__ == "__main__":
    main()
