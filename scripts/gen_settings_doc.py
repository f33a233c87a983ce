"""Generate docs/settings.md from the settings registry (wsgi_zmq/config.py).

    python scripts/gen_settings_doc.py           # write docs/settings.md
    python scripts/gen_settings_doc.py --check   # exit 1 if the committed file is stale
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from docgen import write_or_check  # noqa: E402  (scripts/ is on the path of a script)

from wsgi_zmq import errors  # noqa: E402
from wsgi_zmq.config import REGISTRY, ROLES, SECTIONS  # noqa: E402

TARGET = ROOT / "docs" / "settings.md"

#: gunicorn settings with no counterpart here, and why.
NOT_OFFERED = [
    ("threads", "a sync worker runs one request at a time by design; more concurrency "
                "comes from more workers (`workers`, `TTIN`)."),
    ("sendfile", "the response crosses ZeroMQ, so no file descriptor reaches the front; "
                 "`wsgi.file_wrapper` streams files in chunks under flow control instead."),
    ("reuse_port", "one front process owns each HTTP port; run more fronts on other ports "
                   "(any number of handler pools can serve each)."),
    ("daemon", "the master stays in the foreground; run it under systemd or another "
               "process manager."),
    ("worker_tmp_dir", "the workers' liveness files are made in `/dev/shm` (the temporary "
                       "directory where there is none) and unlinked at once."),
    ("tmp_upload_dir", "unused by gunicorn itself; bodies stream to the app."),
    ("logger_class, logconfig, logconfig_json, syslog, syslog_addr, syslog_prefix, "
     "syslog_facility, disable_redirect_access_to_syslog",
     "logging is configured with `logconfig_dict` (which can add any handler of the "
     "standard library, `SysLogHandler` included)."),
    ("enable_backlog_metric", "the kernel's accept queue is not measured: the wait that "
     "matters is the queue for a worker (`wsgi_zmq.queue.depth` in statsd, "
     "`wsgi_zmq_queue_depth` in Prometheus; see `docs/metrics.md`)."),
    ("enable_stdio_inheritance", "stdio is inherited; `capture_output` redirects it."),
    ("spew", "a debugging aid for gunicorn's own code."),
    ("paste, raw_paste_global_conf", "PasteDeploy applications are not loaded; give "
                                     "`MODULE:CALLABLE`."),
    ("ssl_version", "deprecated in gunicorn; `ssl_min_version` sets the oldest TLS version."),
    ("suppress_ragged_eofs, ssl_context", "a client's unclean TLS close is a closed "
     "connection, as any other; the server context is built from the settings above."),
    ("http_protocols, http2_*", "the front speaks HTTP/1.1 (and 1.0) only, over TCP or TLS "
     "(ALPN offers `http/1.1` alone). HTTP/2 is out of scope for now: its multiplexed "
     "streams would need a second framing layer and flow control per stream in the front, "
     "whose whole design is one request at a time per connection with one credit window."),
    ("protocol, uwsgi_allow_ips", "the front speaks HTTP; the backend speaks the protocol "
                                  "of `docs/protocol.md`."),
    ("permit_obsolete_folding, strip_header_spaces, permit_unconventional_http_method, "
     "permit_unconventional_http_version, casefold_http_method, header_map, "
     "forwarder_headers",
     "the parser applies RFC 9112 strictly and always drops header names with `_` "
     "(gunicorn's `header_map = drop`); there is no lenient mode."),
    ("initgroups", "`user` and `group` set the uid and the one gid."),
    ("root_path, asgi_*, websocket_*, http_parser, dirty_*, on_dirty_starting, "
     "dirty_post_fork, dirty_worker_init, dirty_worker_exit, control_socket*",
     "ASGI, gunicorn's own parser choice, its dirty arbiters and control socket have no "
     "counterpart in a WSGI server."),
]

#: A paragraph under a section's title, for what its settings share.
SECTION_NOTES = {
    "Backend": (
        "The CURVE settings mean the same in every role, and the job client "
        "(`python -m wsgi_zmq.client`) takes them under the same flags: `curve_secret_key` "
        "is always this process's own key pair (a front's server key; a pool's or a "
        "client's client key), `curve_server_key` always the public key of the front it "
        "connects to, and `curve_allow` always the directory of public keys a front admits "
        "(workers of the backend, and clients and MDP workers of the job endpoint)."),
    "Jobs": (
        "The job endpoint and job pools: `docs/jobs.md` shows every client and worker form "
        "frame by frame."),
}

ROLE_NAMES = {"all": "`wsgi_zmq`", "front": "`wsgi_zmq.front`", "handler": "`wsgi_zmq.handler`"}


def render() -> str:
    out = ["# Settings", "",
           "Generated from `wsgi_zmq/config.py` by `scripts/gen_settings_doc.py`; do not edit.",
           "",
           "Every setting is a command-line flag and a key of the Python config file (`-c FILE`,",
           "where it is a module-level name). Values apply in this order, each overriding the",
           "one before: the default, the config file, the environment variable",
           "`WSGI_ZMQ_CMD_ARGS` (parsed like a command line), the command line. An unknown",
           "name in a config file is reported as a warning.", "",
           "Entry points: " + ", ".join(f"{ROLE_NAMES[r]}" for r in ROLES)
           + " (`python -m ...`). Each offers only the settings that apply to it.", ""]
    for section in SECTIONS:
        settings = [s for s in REGISTRY.values() if s.section == section]
        if not settings:
            continue
        out += [f"## {section}", ""]
        if section in SECTION_NOTES:
            out += [SECTION_NOTES[section], ""]
        for setting in settings:
            out.append(f"### `{setting.name}`")
            out.append("")
            flags = ", ".join(f"`{flag}`" for flag in setting.cli)
            if not flags:
                flags = (f"the positional argument `{setting.meta}`" if setting.meta
                         else "(config file only)")
            if setting.cli and setting.action != "flag":
                flags += f" `{setting.meta or 'VALUE'}`"
            if setting.action == "append":
                flags += " (repeatable)"
            default = setting.default_doc or repr(setting.default)
            roles = ", ".join(ROLE_NAMES[r] for r in ROLES if r in setting.roles)
            out.append(f"- Command line: {flags}")
            out.append(f"- Default: `{default}`")
            out.append(f"- Entry points: {roles}")
            out.append(f"- Since: {setting.since}")
            out.append("")
            out.append(inspect.cleandoc(setting.desc).strip())
            out.append("")
    out += ["## gunicorn settings not offered", "",
            "Every gunicorn setting that means the same here has gunicorn's name, flags and",
            "default above, but one default: `limit_request_line` is 8190 (gunicorn: 4094),",
            "because RFC 9112 section 3 asks a server to accept request lines of at least",
            "8000 octets. These gunicorn settings are not offered, and why:", ""]
    out += [f"- `{names}`: {why}" for names, why in NOT_OFFERED]
    out.append("")
    out += ["## Exit codes", ""]
    for name in ("EXIT_OK", "EXIT_FAILURE", "EXIT_CONFIG", "EXIT_WORKER_BOOT"):
        value = getattr(errors, name)
        doc = _constant_doc(name)
        out.append(f"- `{value}` ({name}): {doc}")
    out.append("")
    return "\n".join(out)


def _constant_doc(name: str) -> str:
    """The `#:` comment above a constant in wsgi_zmq/errors.py."""
    lines = (ROOT / "wsgi_zmq" / "errors.py").read_text().splitlines()
    for i, line in enumerate(lines):
        if line.startswith(f"{name}:"):
            doc = []
            j = i - 1
            while j >= 0 and lines[j].startswith("#:"):
                doc.insert(0, lines[j][2:].strip())
                j -= 1
            return " ".join(doc)
    return ""


def main() -> int:
    return write_or_check(TARGET, render(), "gen_settings_doc.py", __doc__)


if __name__ == "__main__":
    sys.exit(main())
