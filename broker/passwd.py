"""``rallycast passwd``: manage the broker's users, like ``mosquitto_passwd``.

    rallycast passwd add riverside              # asks for the password twice
    rallycast passwd add riverside --generate   # prints a new random password once
    echo "$PW" | rallycast passwd add riverside --password-stdin
    rallycast passwd remove riverside
    rallycast passwd list --data-dir /var/lib/rallycast   # or --config FILE, before or after

A club's scorer user is named after the club id; the scorer service's user is
``Settings.service_user`` (``rallycast-service``). The embedded broker re-reads the file when it
changes, so no restart is needed.
"""

from __future__ import annotations

import argparse
import getpass
import secrets
import sys

from broker.acl import Role, role_of
from broker.auth import PasswordFile, PasswordFileError
from scorer.config import load_settings

# What `rallycast passwd list` prints for each role (a user in the file is never anonymous).
ROLE_LABELS = {Role.SERVICE: "service", Role.CLUB: "club scorer", Role.NONE: "no role"}


DATA_DIR_HELP = "directory of the password file (data_dir/passwd)"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help=DATA_DIR_HELP)
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    add = actions.add_parser("add", help="add a user or change their password")
    add.add_argument("user")
    how = add.add_mutually_exclusive_group()
    how.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    how.add_argument("--generate", action="store_true", help="generate and print a password")
    remove = actions.add_parser("remove", help="remove a user")
    remove.add_argument("user")
    listing = actions.add_parser("list", help="list the users and their roles")
    for action in (add, remove, listing):
        # Also after the action (`rallycast passwd list --data-dir D`); SUPPRESS keeps a value
        # given before it. (scorer.cli adds --config the same way.)
        action.add_argument("--data-dir", default=argparse.SUPPRESS, help=DATA_DIR_HELP)


def _read_password(args: argparse.Namespace) -> str:
    if args.generate:
        password = secrets.token_urlsafe(18)
        print(f"password for {args.user}: {password}")
        print("(shown once: store it now)", file=sys.stderr)
        return password
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass(f"password for {args.user}: ")
    if first != getpass.getpass("again: "):
        raise PasswordFileError("the two passwords differ")
    return first


def _empty_hint(passwords: PasswordFile) -> str:
    if passwords.path.exists():
        return ""
    return (
        " (the file does not exist: is this the data dir `rallycast up` used? pass"
        " --data-dir DIR or --config FILE)"
    )


def main(args: argparse.Namespace) -> int:
    settings = load_settings(getattr(args, "config", None), overrides={"data_dir": args.data_dir})
    passwords = PasswordFile(settings.password_file)
    try:
        if args.action == "list":
            users = passwords.users()
            # Where it looked goes to stderr: stdout stays one "user<TAB>role" line per user.
            if not users:
                print(f"no users in {passwords.path}{_empty_hint(passwords)}", file=sys.stderr)
            else:
                print(f"users in {passwords.path}:", file=sys.stderr)
            for user in users:
                print(f"{user}\t{ROLE_LABELS[role_of(user, settings.service_user)]}")
            return 0
        if args.action == "remove":
            if not passwords.remove(args.user):
                print(f"rallycast passwd: no user {args.user!r}", file=sys.stderr)
                return 1
            print(f"removed {args.user}")
            return 0
        # add
        if role_of(args.user, settings.service_user) is Role.NONE:
            print(
                f"note: {args.user!r} is neither a club id nor the service user:"
                " it can log in but has no rights",
                file=sys.stderr,
            )
        passwords.set(args.user, _read_password(args))
        print(f"saved {args.user} in {passwords.path}", file=sys.stderr)
        return 0
    except (PasswordFileError, OSError) as exc:
        print(f"rallycast passwd: {exc}", file=sys.stderr)
        return 1
    except (EOFError, KeyboardInterrupt):
        print("rallycast passwd: cancelled", file=sys.stderr)
        return 1
