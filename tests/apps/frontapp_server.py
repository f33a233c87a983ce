"""FrontApp mounted in gevent.pywsgi.WSGIServer, as a user would: run as a script.

    python tests/apps/frontapp_server.py BACKEND_ENDPOINT

Logs ``Listening at: http://HOST:PORT`` and ``Backend at: ENDPOINT`` so tests read the ports.
"""

import logging
import signal
import sys

import gevent
from gevent.pywsgi import WSGIServer

from wsgi_zmq.front import FrontApp


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="[%(process)d] [%(levelname)s] %(message)s")
    app = FrontApp(backend=[sys.argv[1]], request_timeout=10)
    server = WSGIServer(("127.0.0.1", 0), app, log=None)
    server.start()
    logging.getLogger("wsgi_zmq.error.front").info(
        "Listening at: http://127.0.0.1:%d", server.server_port)
    app.endpoints  # noqa: B018 (binds the backend now, and logs it)
    gevent.signal_handler(signal.SIGTERM, server.stop)
    server.serve_forever()
    app.close()


if __name__ == "__main__":
    main()
