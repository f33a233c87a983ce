"""``python -m wsgi_zmq.keys``, run as real processes: the files it writes, their modes, its
refusals and its command line.

Every test runs the tool in a fresh ``python`` subprocess in its own ``tmp_path`` and reads
the files back with ``zmq.auth.load_certificate``, the reader the front and the handlers use.
"""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import zmq
from zmq.auth import load_certificate

from support import ROOT, python_env
from wsgi_zmq import __version__
from wsgi_zmq.errors import EXIT_CONFIG, EXIT_OK

pytestmark = pytest.mark.skipif(not zmq.has("curve"), reason="libzmq without CURVE")


def keys(*args: str, cwd: Path, umask: int = -1) -> subprocess.CompletedProcess[str]:
    """Run ``python -m wsgi_zmq.keys ARGS`` in ``cwd`` (under ``umask`` if given)."""
    return subprocess.run([sys.executable, "-m", "wsgi_zmq.keys", *args], cwd=cwd,
                          env=python_env(), capture_output=True, text=True, timeout=60,
                          check=False, umask=umask)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def assert_one_line_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == EXIT_CONFIG, result
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    for word in words:
        assert word in lines[0]


# -- generate ---------------------------------------------------------------------------------

@pytest.mark.parametrize("umask", [0o022, 0o000])
def test_generate_writes_a_pair_that_load_certificate_and_show_read_back(
        tmp_path: Path, umask: int) -> None:
    """1. generate NAME --dir keys, under the caller's umask 022 and under a lax 000
    2. NAME.key is 0644 and holds only the public key; NAME.key_secret is 0600 and holds
       both, the secret one belonging to the public one
    3. stdout names both files and the public key; ``show`` prints that key for each file"""
    result = keys("generate", "front", "--dir", "keys", cwd=tmp_path, umask=umask)
    assert result.returncode == EXIT_OK, result.stderr
    assert result.stderr == ""
    public_file = tmp_path / "keys" / "front.key"
    secret_file = tmp_path / "keys" / "front.key_secret"
    assert mode(public_file) == 0o644
    assert mode(secret_file) == 0o600
    assert sorted(p.name for p in (tmp_path / "keys").iterdir()) == [
        "front.key", "front.key_secret"]  # no staging directory left behind

    public, no_secret = load_certificate(public_file)
    same_public, secret = load_certificate(secret_file)
    assert no_secret is None
    assert secret is not None and same_public == public
    assert zmq.curve_public(secret) == public
    key = public.decode("ascii")
    assert len(key) == 40

    assert result.stdout.splitlines() == [
        "Wrote keys/front.key (public key, mode 0644)",
        "Wrote keys/front.key_secret (secret key, mode 0600)",
        f"Public key: {key}",
    ]
    for path in ("keys/front.key", "keys/front.key_secret"):
        shown = keys("show", path, cwd=tmp_path)
        assert shown.returncode == EXIT_OK, shown.stderr
        assert shown.stdout == key + "\n"


def test_generate_defaults_to_the_current_directory(tmp_path: Path) -> None:
    result = keys("generate", "pool-a", cwd=tmp_path)
    assert result.returncode == EXIT_OK, result.stderr
    assert mode(tmp_path / "pool-a.key") == 0o644
    assert mode(tmp_path / "pool-a.key_secret") == 0o600


def test_generate_creates_a_missing_dir_mode_0700(tmp_path: Path) -> None:
    """1. generate with a --dir two levels below tmp_path, under umask 0
    2. both new directories are 0700 whatever the caller's umask"""
    result = keys("generate", "front", "--dir", "etc/keys", cwd=tmp_path, umask=0)
    assert result.returncode == EXIT_OK, result.stderr
    assert mode(tmp_path / "etc" / "keys") == 0o700
    assert mode(tmp_path / "etc") == 0o700


def test_generate_leaves_an_existing_dir_alone(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o755)
    assert keys("generate", "front", "--dir", "shared", cwd=tmp_path).returncode == EXIT_OK
    assert mode(shared) == 0o755


SPY = """
import json, os, stat, sys
import zmq.auth.certs
from wsgi_zmq import keys

seen = []
write = zmq.auth.certs._write_key_file

def spy(path, *args, **kwargs):
    write(path, *args, **kwargs)
    seen.append({"file": os.path.basename(path),
                 "mode": stat.S_IMODE(os.stat(path).st_mode),
                 "dir_mode": stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode),
                 "in_final_dir": os.path.dirname(path) == sys.argv[1]})

zmq.auth.certs._write_key_file = spy
try:
    keys.main(["generate", "front", "--dir", sys.argv[1]])
except SystemExit as exc:
    assert exc.code == 0, exc.code
print(json.dumps({"seen": seen, "umask": os.umask(0),
                  "gevent": sorted(m for m in sys.modules if m.split(".")[0] == "gevent")}))
"""


def test_the_secret_file_is_private_from_the_moment_it_is_written(tmp_path: Path) -> None:
    """1. run generate in a process with umask 0, spying on pyzmq's file writer
    2. each file, as soon as it is written, is 0600 in a 0700 staging directory, never in
       the final directory; the caller's umask is restored; gevent was never imported"""
    result = subprocess.run([sys.executable, "-c", SPY, str(tmp_path)], cwd=ROOT,
                            env=python_env(), capture_output=True, text=True, timeout=60,
                            check=False, umask=0)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert sorted(s["file"] for s in report["seen"]) == ["front.key", "front.key_secret"]
    for seen in report["seen"]:
        assert seen["mode"] == 0o600, seen
        assert seen["dir_mode"] == 0o700, seen
        assert not seen["in_final_dir"], seen
    assert report["umask"] == 0
    assert report["gevent"] == []


# -- refusing to overwrite, and --force -------------------------------------------------------

def test_generate_refuses_to_overwrite_then_force_replaces(tmp_path: Path) -> None:
    """1. generate NAME, then generate NAME again: exit 2, one line naming the file, the
       old pair untouched
    2. with only the secret file left: refused too, naming it, and no public file written
    3. with --force: a new pair, with the right modes even where the old file was lax"""
    assert keys("generate", "front", cwd=tmp_path).returncode == EXIT_OK
    public_file, secret_file = tmp_path / "front.key", tmp_path / "front.key_secret"
    before = public_file.read_bytes(), secret_file.read_bytes()

    again = keys("generate", "front", cwd=tmp_path)
    assert_one_line_error(again, "front.key", "already exists")
    assert (public_file.read_bytes(), secret_file.read_bytes()) == before

    public_file.unlink()
    again = keys("generate", "front", cwd=tmp_path)
    assert_one_line_error(again, "front.key_secret", "already exists")
    assert not public_file.exists()
    assert secret_file.read_bytes() == before[1]

    secret_file.chmod(0o644)
    forced = keys("generate", "front", "--force", cwd=tmp_path)
    assert forced.returncode == EXIT_OK, forced.stderr
    assert mode(public_file) == 0o644
    assert mode(secret_file) == 0o600
    new_public, new_secret = load_certificate(secret_file)
    assert new_secret is not None and new_secret.decode() not in before[1].decode()
    assert load_certificate(public_file)[0] == new_public
    assert f"Public key: {new_public.decode()}" in forced.stdout


def test_a_dangling_symlink_counts_as_an_existing_file(tmp_path: Path) -> None:
    (tmp_path / "front.key_secret").symlink_to(tmp_path / "elsewhere")
    assert_one_line_error(keys("generate", "front", cwd=tmp_path), "front.key_secret")
    assert not (tmp_path / "elsewhere").exists()
    assert not (tmp_path / "front.key").exists()


@pytest.mark.parametrize("name", ["a/b", ".hidden", "front.key", "front.key_secret", ""])
def test_generate_refuses_a_bad_name(tmp_path: Path, name: str) -> None:
    assert_one_line_error(keys("generate", name, cwd=tmp_path), "Bad key name")
    assert list(tmp_path.iterdir()) == []


def test_generate_refuses_a_dir_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    assert_one_line_error(keys("generate", "front", "--dir", "file", cwd=tmp_path),
                          "file", "not a directory")


# -- show -------------------------------------------------------------------------------------

PUBLIC = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"
GARBAGE = {
    "text": b"hello, world\n",
    "binary": bytes(range(256)) * 4,
    "empty": b"",
    "short key": b'curve\n    public-key = "abc"\n',
    "not z85": b'curve\n    public-key = "' + b"~" * 40 + b'"\n',
    "bad secret": f'curve\n    public-key = "{PUBLIC}"\n    secret-key = "xyz"\n'.encode(),
}


@pytest.mark.parametrize("content", GARBAGE.values(), ids=GARBAGE.keys())
def test_show_refuses_a_file_that_is_not_a_certificate(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "garbage.key").write_bytes(content)
    assert_one_line_error(keys("show", "garbage.key", cwd=tmp_path), "garbage.key")


def test_show_refuses_a_secret_file_whose_keys_do_not_match(tmp_path: Path) -> None:
    public, _ = zmq.curve_keypair()
    _, secret = zmq.curve_keypair()
    (tmp_path / "mixed.key_secret").write_text(
        f'curve\n    public-key = "{public.decode()}"\n    secret-key = "{secret.decode()}"\n')
    assert_one_line_error(keys("show", "mixed.key_secret", cwd=tmp_path), "does not belong")


@pytest.mark.parametrize("path", ["missing.key", "."])
def test_show_refuses_a_missing_file_or_a_directory(tmp_path: Path, path: str) -> None:
    assert_one_line_error(keys("show", path, cwd=tmp_path), path)


# -- the command line -------------------------------------------------------------------------

@pytest.mark.parametrize("args,expect", [
    ([], ["generate", "show", "--version"]),
    (["generate"], ["NAME", "--dir", "--force", "0600"]),
    (["show"], ["FILE", "Z85"]),
])
def test_help(tmp_path: Path, args: list[str], expect: list[str]) -> None:
    result = keys(*args, "--help", cwd=tmp_path)
    assert result.returncode == EXIT_OK, result.stderr
    assert result.stdout.startswith(f"usage: python -m wsgi_zmq.keys {' '.join(args)}".strip())
    for word in expect:
        assert word in result.stdout
    assert list(tmp_path.iterdir()) == []


def test_version(tmp_path: Path) -> None:
    result = keys("--version", cwd=tmp_path)
    assert result.returncode == EXIT_OK
    assert result.stdout == f"wsgi_zmq {__version__}\n"


@pytest.mark.parametrize("args", [[], ["frobnicate"], ["generate"], ["show"],
                                  ["generate", "front", "--bogus"]])
def test_a_usage_error_is_one_line_and_exit_2(tmp_path: Path, args: list[str]) -> None:
    assert_one_line_error(keys(*args, cwd=tmp_path), "--help")


def test_bin_script_runs_the_tool(tmp_path: Path) -> None:
    script = str(ROOT / "bin" / "wsgi-zmq-keys")
    result = subprocess.run([sys.executable, script, "generate", "front"], cwd=tmp_path,
                            env=python_env(), capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == EXIT_OK, result.stderr
    assert mode(tmp_path / "front.key_secret") == 0o600
    helped = subprocess.run([sys.executable, script, "--help"], cwd=tmp_path,
                            env=python_env(), capture_output=True, text=True, timeout=60,
                            check=False)
    assert helped.stdout.startswith("usage: wsgi-zmq-keys ")
