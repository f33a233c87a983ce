"""python -m wsgi_zmq.ctl: send a command to a front's or handler pool's control socket."""

from wsgi_zmq.ctl import main

if __name__ == "__main__":
    main()
