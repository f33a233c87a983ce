"""Who may be a worker: CURVE on the front's backend socket, and the ZAP handler that admits
workers by their public key.

Usage, in the front's process, on its gevent loop::

    guard = Guard(context, loop, cfg)   # loads the key pair, starts the ZAP handler
    guard.secure(router)                 # CURVE server options, before the socket binds
    guard.reload()                       # on HUP: read curve_allow again; the keys admitted
    guard.refused("...")                 # log a refusal (a few lines a minute)

CURVE (ZeroMQ RFC 26) encrypts the link and authenticates both ends: a worker must know the
front's public key, and the front asks its ZAP handler (RFC 27) about each worker's public
key during the handshake. The allowlist is a directory of public key files in the format
``zmq.auth`` reads (``python -m wsgi_zmq.keys generate NAME`` writes them).

pyzmq's thread-based authenticator would run its own thread and socket loop beside gevent's;
its base class, ``zmq.auth.Authenticator``, does not register with any loop. So the ZAP socket
is watched here like the dispatcher's ROUTER: its file descriptor on gevent's loop, drained
until ``Again`` (the descriptor is edge-triggered). ``handle_zap_message`` is a coroutine in
pyzmq only so that a credentials callback may await; with a directory of keys it never does,
and is run to its end at once.
"""

from __future__ import annotations

import logging
from typing import Any

import zmq
import zmq.auth

from wsgi_zmq.errors import ConfigError
from wsgi_zmq.log import LogLimiter

log = logging.getLogger("wsgi_zmq.error.auth")

_ZAP_DOMAIN = "wsgi_zmq"


class _Authenticator(zmq.auth.Authenticator):
    """pyzmq's authenticator, reporting each refusal to the guard."""

    guard: Guard

    def _send_zap_reply(self, request_id: bytes, status_code: bytes, status_text: bytes,
                        user_id: str = "anonymous") -> None:
        super()._send_zap_reply(request_id, status_code, status_text, user_id)
        if status_code != b"200":
            self.guard.refused(f"the key of a worker at {self.guard.address} is not in "
                               f"curve_allow ({status_text.decode('ascii', 'replace')})")


class Guard:
    """The front's CURVE key pair and its ZAP handler; see the module docstring.

    ``own_key`` (the front's public key) is admitted too when ``admit_self`` is true: in
    all-in-one mode the workers the supervisor forks use the front's key pair.
    """

    def __init__(self, context: zmq.Context[Any], loop: Any, secret_file: str,
                 allow_dir: str | None, admit_self: bool = False) -> None:
        try:
            public, secret = zmq.auth.load_certificate(secret_file)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"Cannot read the key pair curve_secret_key={secret_file}: "
                              f"{exc}") from None
        if secret is None:
            raise ConfigError(f"curve_secret_key={secret_file} holds no secret key (give the "
                              "NAME.key_secret file)")
        self.public = public
        self.secret = secret
        self.allow_dir = allow_dir
        self.admit_self = admit_self
        self.address = ""  # of the worker whose ZAP request is being handled
        self.refusals = LogLimiter(log, "refused workers")
        self.auth = _Authenticator(context, log=logging.getLogger("wsgi_zmq.error.zap"))
        self.auth.guard = self
        self.auth.start()
        self.admitted = self.reload()
        self._zap = self.auth.zap_socket
        self._watcher = loop.io(self._zap.getsockopt(zmq.FD), 1)
        self._watcher.start(self._on_zap)
        loop.run_callback(self._on_zap)  # the descriptor may be readable already

    def secure(self, sock: zmq.Socket[Any]) -> None:
        """Make ``sock`` (the ROUTER, before it binds) a CURVE server that asks ZAP."""
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_server = True
        sock.zap_domain = _ZAP_DOMAIN.encode()

    def reload(self) -> set[bytes]:
        """Read ``curve_allow`` again; return the public keys (Z85) now admitted. A key file
        that cannot be read leaves the allowlist as it was (and is logged)."""
        try:
            if self.allow_dir is not None:
                self.auth.configure_curve(domain=_ZAP_DOMAIN, location=self.allow_dir)
            else:
                self.auth.certs[_ZAP_DOMAIN] = {}
        except (OSError, ValueError) as exc:
            log.error("Cannot read curve_allow %s: %s; the allowlist is unchanged",
                      self.allow_dir, exc)
            return self.admitted
        certs = self.auth.certs.setdefault(_ZAP_DOMAIN, {})
        if self.admit_self:
            certs[self.public] = True
        self.admitted = set(certs)
        log.info("CURVE on the backend: %d worker key(s) admitted", len(self.admitted))
        return self.admitted

    def refused(self, why: str) -> None:
        self.refusals.warning("Refused a worker: %s", why)

    def _on_zap(self) -> None:
        zap = self._zap
        while True:
            try:
                message = zap.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            except zmq.ZMQError:
                return  # closed during shutdown
            self.address = message[3].decode("ascii", "replace") if len(message) > 3 else "?"
            step = self.auth.handle_zap_message(message)
            try:
                step.send(None)  # never awaits with a directory of keys: runs to its end
            except StopIteration:
                pass
            else:
                step.close()
                log.error("The ZAP handler waited for a callback; refused")

    def close(self) -> None:
        self._watcher.stop()
        self.auth.stop()
