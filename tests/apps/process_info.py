"""An app that reports the process it runs in, for the tests of process settings.

The answer is JSON: ``pid``, ``uid``, ``gid``, ``cwd``, ``sys_path`` and ``env`` (the
variables named by ``?env=NAME``, repeatable). ``?create=PATH`` creates the file PATH first
and adds its permission bits as ``mode``; ``?say=TEXT`` prints TEXT to stdout first.
"""

import json
import os
import stat
import sys
from urllib.parse import parse_qs


def app(environ, start_response):
    query = parse_qs(environ["QUERY_STRING"])
    data = {"pid": os.getpid(), "uid": os.getuid(), "gid": os.getgid(), "cwd": os.getcwd(),
            "sys_path": sys.path,
            "env": {name: os.environ.get(name) for name in query.get("env", [])}}
    for path in query.get("create", []):
        with open(path, "w") as f:
            f.write("created\n")
        data["mode"] = stat.S_IMODE(os.stat(path).st_mode)
    for text in query.get("say", []):
        print(text, flush=True)
    body = json.dumps(data).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
