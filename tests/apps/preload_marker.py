"""An app module that records who imported it: at import it appends the importing
process's pid, one line, to the file named by the environment variable PRELOAD_MARK."""

import os

with open(os.environ["PRELOAD_MARK"], "a") as _mark:
    _mark.write(f"{os.getpid()}\n")


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"{os.getpid()}\n".encode()]
