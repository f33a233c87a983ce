"""python -m wsgi_zmq.client: send one job request (Majordomo, MDP/0.2) and print its reply."""

from wsgi_zmq.client import main

if __name__ == "__main__":
    main()
