"""A config file (``-c FILE``) written the way gunicorn's documentation shows one.

Settings are module-level names; hooks are functions. Every hook logs one line that starts
with ``hook NAME`` through ``server.log`` or ``worker.log``, so a live test sees which hooks
ran and in which process (the pid is in the line's prefix).
"""

bind = "127.0.0.1:8000"
workers = 2
timeout = 30
keepalive = 2
loglevel = "info"
accesslog = "-"
access_log_format = 'access %(h)s "%(r)s" %(s)s %(b)s worker=%(worker)s'
proc_name = "gunicorn-style"


def on_starting(server):
    server.log.info("hook on_starting")


def when_ready(server):
    server.log.info("hook when_ready: server is ready. Spawning workers")


def on_reload(server):
    server.log.info("hook on_reload")


def pre_fork(server, worker):
    server.log.info("hook pre_fork")


def post_fork(server, worker):
    server.log.info("hook post_fork: Worker spawned (pid: %s)", worker.pid)


def post_worker_init(worker):
    worker.log.info("hook post_worker_init")


def pre_request(worker, req):
    worker.log.info("hook pre_request %s %s", req.method, req.path)


def post_request(worker, req, environ, resp):
    worker.log.info("hook post_request %s %s -> %s", req.method, req.path, resp.status)


def worker_int(worker):
    worker.log.info("hook worker_int: worker received INT or QUIT signal")


def worker_abort(worker):
    worker.log.info("hook worker_abort: worker received SIGABRT signal")


def pre_exec(server):
    server.log.info("hook pre_exec: Forked child, re-executing.")


def child_exit(server, worker):
    server.log.info("hook child_exit %s", worker.pid)


def worker_exit(server, worker):
    server.log.info("hook worker_exit %s", worker.pid)


def nworkers_changed(server, new_value, old_value):
    server.log.info("hook nworkers_changed %s -> %s", old_value, new_value)


def on_exit(server):
    server.log.info("hook on_exit")
