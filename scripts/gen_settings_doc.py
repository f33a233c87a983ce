"""Generate docs/settings.md from the settings registry (wsgi_zmq/config.py).

    python scripts/gen_settings_doc.py           # write docs/settings.md
    python scripts/gen_settings_doc.py --check   # exit 1 if the committed file is stale
"""

from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from wsgi_zmq import errors  # noqa: E402
from wsgi_zmq.config import REGISTRY, ROLES, SECTIONS  # noqa: E402

TARGET = ROOT / "docs" / "settings.md"

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
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the file is stale")
    args = parser.parse_args()
    text = render()
    if args.check:
        if not TARGET.exists() or TARGET.read_text() != text:
            print(f"{TARGET.relative_to(ROOT)} is stale: run python scripts/gen_settings_doc.py",
                  file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
