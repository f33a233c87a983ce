"""CurveZMQ key pairs for the backend link: ``python -m wsgi_zmq.keys``.

Generate one key pair for the front and one for each handler pool (or job client)::

    python -m wsgi_zmq.keys generate front --dir keys
    python -m wsgi_zmq.keys generate pool-a --dir keys

Each ``generate`` writes two files in ``zmq.auth``'s certificate format (the format
``zmq.auth.load_certificate`` reads) and prints their paths and the public key:

``NAME.key``
    the public key, mode 0644: hand it to the other side.
``NAME.key_secret``
    the public and the secret key, mode 0600: it never leaves this host.

Then wire them up (``allowed/`` holds the ``.key`` files of the pools the front admits; remove
one and send ``HUP`` to the front to revoke that pool)::

    python -m wsgi_zmq.front --curve-secret-key keys/front.key_secret --curve-allow allowed/
    python -m wsgi_zmq.handler APP --curve-secret-key keys/pool-a.key_secret \\
        --curve-server-key keys/front.key

``python -m wsgi_zmq.keys show FILE`` prints the public key (Z85, 40 characters) of a ``.key``
or ``.key_secret`` file, e.g. to check which key an allowlist entry holds.

What ``generate`` guarantees:

- the secret file is never readable by anyone but its owner, not even for a moment: both
  files are written under umask 0o077 in a fresh mode-0700 directory inside ``--dir``, given
  their final modes there, then moved into place;
- an existing ``NAME.key`` or ``NAME.key_secret`` is never overwritten without ``--force``;
  the files are put in place with hard links, which fail if the name exists, so two runs
  racing for one name cannot both win; ``--force`` replaces the old files (it does not rewrite
  them, so an old file's lax mode does not carry over to the new key);
- ``--dir`` (default: the current directory) is created with mode 0700 if it is missing.

Exit codes (``wsgi_zmq.errors``): 0 done; 2 refused (a file exists, not a certificate, an
unusable directory or name, bad arguments), with one line on stderr naming the problem.

This module imports neither gevent nor zmq: the functions that need zmq import it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import struct
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NoReturn

from wsgi_zmq import __version__
from wsgi_zmq.cli import UsageParser
from wsgi_zmq.errors import EXIT_CONFIG, EXIT_OK, ConfigError

PROG = "python -m wsgi_zmq.keys"

#: The file names ``zmq.auth.create_certificates`` gives a key pair, and that
#: ``zmq.auth.load_certificates`` (an allowlist directory) looks for.
PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"

PUBLIC_MODE = 0o644
SECRET_MODE = 0o600
DIRECTORY_MODE = 0o700
#: Under this umask every file and directory is created private (0600, 0700).
PRIVATE_UMASK = 0o077

#: A CURVE key is 32 bytes; Z85 encodes it in 40 characters (ZMQ RFC 32).
Z85_KEY_LENGTH = 40
#: A certificate is a few hundred bytes; anything much larger is not one, and is not read.
MAX_CERTIFICATE_SIZE = 64 * 1024


class KeyFileExists(ConfigError):
    """``generate_keys`` refused to overwrite ``path`` (no ``force``)."""

    def __init__(self, path: str) -> None:
        super().__init__(f"{path} already exists: not overwritten (--force replaces it)")
        self.path = path


@dataclass(frozen=True)
class KeyPair:
    """What ``generate_keys`` wrote: the two files, and the public key (Z85) they hold."""

    public_file: str
    secret_file: str
    public_key: str


def key_paths(directory: str | os.PathLike[str], name: str) -> tuple[str, str]:
    """The public and the secret file of key pair ``name`` in ``directory``."""
    base = os.path.join(os.fspath(directory), name)
    return base + PUBLIC_SUFFIX, base + SECRET_SUFFIX


def check_name(name: str) -> None:
    """Raise ``ConfigError`` unless ``name`` can be a key pair's file base name.

    A name is one path component, not hidden (an allowlist directory scan, like
    ``zmq.auth.load_certificates``, skips dot files), without the ``.key`` suffix itself.
    """
    separators = {"/", "\0", os.sep} | ({os.altsep} if os.altsep else set())
    if not name or any(sep in name for sep in separators):
        raise ConfigError(f"Bad key name {name!r}: a name is one file name, use --dir for "
                          "the directory")
    if name.startswith("."):
        raise ConfigError(f"Bad key name {name!r}: it would make hidden files, which an "
                          "allowlist directory scan skips")
    if name.endswith((PUBLIC_SUFFIX, SECRET_SUFFIX)):
        stem = name.rsplit(".", 1)[0]
        raise ConfigError(f"Bad key name {name!r}: give the name without the suffix "
                          f"({stem!r} writes {stem}{PUBLIC_SUFFIX} and {stem}{SECRET_SUFFIX})")


@contextlib.contextmanager
def _private_umask() -> Iterator[None]:
    old = os.umask(PRIVATE_UMASK)
    try:
        yield
    finally:
        os.umask(old)


def _ensure_directory(directory: str) -> None:
    """Create ``directory`` (and any missing parents) mode 0700, under the private umask.

    An existing directory is left as it is."""
    try:
        os.makedirs(directory, mode=DIRECTORY_MODE)
    except FileExistsError:
        if not os.path.isdir(directory):
            raise ConfigError(f"--dir {directory} exists and is not a directory") from None


def _install(staged: str, path: str, force: bool) -> None:
    """Move the finished file ``staged`` to ``path``; without ``force`` only if ``path`` is
    free, decided atomically by the kernel (``link`` fails on any existing name, a dangling
    symlink included)."""
    if force:
        os.replace(staged, path)
        return
    try:
        os.link(staged, path)
    except FileExistsError:
        raise KeyFileExists(path) from None
    except PermissionError:
        # a filesystem without hard links (EPERM): fall back to check, then rename
        if os.path.lexists(path):
            raise KeyFileExists(path) from None
        os.replace(staged, path)


def _require_curve() -> None:
    import zmq

    if not zmq.has("curve"):
        raise ConfigError(f"libzmq {zmq.zmq_version()} was built without CURVE support: "
                          "no keys can be generated with it")


def generate_keys(name: str, directory: str | os.PathLike[str] = ".",
                  force: bool = False) -> KeyPair:
    """Write a new key pair as ``directory/name.key`` and ``directory/name.key_secret``.

    The files are those of ``zmq.auth.create_certificates``; the secret file is mode 0600
    and was never readable by others, the public file is mode 0644, a missing ``directory``
    is created mode 0700 (see the module docstring). Without ``force`` nothing is written
    if either file exists.

    Raises ``KeyFileExists`` (a ``ConfigError``) naming the existing file, ``ConfigError``
    for a bad ``name`` (``check_name``), an unusable directory, a write that failed or a
    libzmq without CURVE. The caller's umask is restored on return.
    """
    check_name(name)
    directory = os.fspath(directory)
    public_file, secret_file = key_paths(directory, name)
    _require_curve()
    from zmq.auth import create_certificates

    try:
        with _private_umask():
            _ensure_directory(directory)
            if not force:
                for path in (public_file, secret_file):
                    if os.path.lexists(path):
                        raise KeyFileExists(path)
            staging = tempfile.mkdtemp(prefix=".wsgi-zmq-keys-", dir=directory)  # mode 0700
            try:
                staged_public, staged_secret = create_certificates(staging, name)
                os.chmod(staged_secret, SECRET_MODE)
                os.chmod(staged_public, PUBLIC_MODE)
                public_key = read_public_key(staged_public)
                _install(staged_public, public_file, force)
                try:
                    _install(staged_secret, secret_file, force)
                except BaseException:
                    if not force:  # lost a race for the secret file: leave no half pair
                        with contextlib.suppress(OSError):
                            os.unlink(public_file)
                    raise
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    except OSError as exc:
        raise ConfigError(f"Cannot write the keys in {directory}: {exc.strerror or exc}") \
            from exc
    return KeyPair(public_file, secret_file, public_key)


def _is_z85_key(key: bytes) -> bool:
    from zmq.utils import z85

    if len(key) != Z85_KEY_LENGTH:
        return False
    try:
        z85.decode(key)
    except (KeyError, ValueError, struct.error):  # a character or a group out of range
        return False
    return True


def read_public_key(path: str | os.PathLike[str]) -> str:
    """The public key (Z85, 40 characters) of a ``.key`` or ``.key_secret`` file.

    The file is read with ``zmq.auth.load_certificate``. Raises ``ConfigError`` naming
    ``path`` if it is missing, unreadable, not a regular file of certificate size, or has
    no valid ``public-key`` line; or if it holds a secret key that is not valid or (with a
    libzmq that has CURVE) does not belong to its public key.
    """
    import zmq
    from zmq.auth import load_certificate

    path = os.fspath(path)
    try:
        if not os.path.lexists(path):
            raise ConfigError(f"{path}: no such file")
        if not os.path.isfile(path):
            raise ConfigError(f"{path} is not a regular file, so not a certificate")
        if os.path.getsize(path) > MAX_CERTIFICATE_SIZE:
            raise ConfigError(f"{path} is not a CurveZMQ certificate: it is far too large")
        public, secret = load_certificate(path)
    except ValueError:
        raise ConfigError(f"{path} is not a CurveZMQ certificate: it has no public-key "
                          "line") from None
    except OSError as exc:
        raise ConfigError(f"Cannot read {path}: {exc.strerror or exc}") from None
    if not _is_z85_key(public):
        raise ConfigError(f"{path} is not a CurveZMQ certificate: its public key is not "
                          f"{Z85_KEY_LENGTH} characters of Z85")
    if secret is not None:
        if not _is_z85_key(secret):
            raise ConfigError(f"{path} is not a CurveZMQ certificate: its secret key is not "
                              f"{Z85_KEY_LENGTH} characters of Z85")
        if zmq.has("curve") and zmq.curve_public(secret) != public:
            raise ConfigError(f"{path} is damaged: its secret key does not belong to its "
                              "public key")
    return public.decode("ascii")


# -- the command line ------------------------------------------------------------------------

class _Parser(UsageParser):
    def line(self, message: str) -> str:
        return f"Error: {message} (see {self.prog} --help)"


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m wsgi_zmq.keys`` and its ``generate`` and ``show``
    subcommands; a usage error exits ``EXIT_CONFIG`` with one line on stderr."""
    script = os.path.basename(sys.argv[0])
    prog = script if script.startswith("wsgi-zmq") else PROG  # bin/ and console scripts
    parser = _Parser(
        prog=prog,
        description="Generate and inspect the CurveZMQ key pairs that authenticate and "
                    "encrypt the link between a front and its handler pools.",
        epilog="Exit codes: 0 done, 2 refused (one line on stderr says why).")
    parser.add_argument("--version", action="version", version=f"wsgi_zmq {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    generate = commands.add_parser(
        "generate", help="write a new key pair, NAME.key and NAME.key_secret",
        description="Write a new key pair: DIR/NAME.key (the public key, mode 0644) and "
                    "DIR/NAME.key_secret (public and secret key, mode 0600), in the format "
                    "of zmq.auth. Prints the paths and the public key.")
    generate.add_argument("name", metavar="NAME",
                          help="the key pair's name, e.g. front or pool-a")
    generate.add_argument("--dir", metavar="DIR", default=".",
                          help="where to write the files (default: the current directory; "
                               "created mode 0700 if missing)")
    generate.add_argument("--force", action="store_true",
                          help="replace existing NAME.key and NAME.key_secret files")

    show = commands.add_parser(
        "show", help="print the public key of a certificate file",
        description="Print the public key (Z85, 40 characters) of a NAME.key or "
                    "NAME.key_secret file.")
    show.add_argument("file", metavar="FILE", help="a .key or .key_secret file")
    return parser


def main(argv: list[str] | None = None) -> NoReturn:
    """``python -m wsgi_zmq.keys``: run the command in ``argv`` (default ``sys.argv[1:]``)
    and exit ``EXIT_OK``, or ``EXIT_CONFIG`` with one line on stderr."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "generate":
            pair = generate_keys(args.name, args.dir, force=args.force)
            print(f"Wrote {pair.public_file} (public key, mode {PUBLIC_MODE:04o})")
            print(f"Wrote {pair.secret_file} (secret key, mode {SECRET_MODE:04o})")
            print(f"Public key: {pair.public_key}")
        else:
            print(read_public_key(args.file))
    except ConfigError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    sys.exit(EXIT_OK)
