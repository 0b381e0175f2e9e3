"""``rallycast passwd``: manage the broker's users, like ``mosquitto_passwd``.

    rallycast passwd add riverside              # asks for the password twice
    rallycast passwd add riverside --generate   # prints a new random password once
    echo "$PW" | rallycast passwd add riverside --password-stdin
    rallycast passwd remove riverside
    rallycast passwd list --data-dir /var/lib/rallycast   # or --config FILE, before or after
    rallycast passwd tokens list [riverside]      # the scorer pages' device tokens
    rallycast passwd tokens revoke riverside 3f9a0c1b2d4e   # one (its id from `tokens list`)
    rallycast passwd tokens revoke riverside --all          # all of riverside's

A club's scorer user is named after the club id; the scorer service's user is
``Settings.service_user`` (``rallycast-service``). The embedded broker re-reads the file when it
changes, so no restart is needed.

Device tokens (broker/tokens.py) are what a scorer page keeps instead of the password. The
embedded broker drops the connections of a revoked token within about a second. ``add`` (a new
password) also revokes all of that user's tokens, and ``remove`` revokes them too.
"""

from __future__ import annotations

import argparse
import getpass
import secrets
import sys

from broker.acl import Role, role_of
from broker.auth import PasswordFile, PasswordFileError
from broker.tokens import TokenFile, TokenFileError, looks_like_token, tokens_path
from scorer.config import load_settings

# What `rallycast passwd list` prints for each role (a user in the file is never anonymous).
ROLE_LABELS = {Role.SERVICE: "service", Role.CLUB: "club scorer", Role.NONE: "no role"}


DATA_DIR_HELP = "directory of the password file (data_dir/passwd)"


def add_user_actions(
    actions: argparse._SubParsersAction,
) -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """Adds the ``add USER [--password-stdin | --generate]`` and ``remove USER`` actions (also
    ``rallycast cluster passwd``, broker/cluster.py); returns their two parsers."""
    add = actions.add_parser("add", help="add a user or change their password")
    add.add_argument("user")
    how = add.add_mutually_exclusive_group()
    how.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    how.add_argument("--generate", action="store_true", help="generate and print a password")
    remove = actions.add_parser("remove", help="remove a user")
    remove.add_argument("user")
    return add, remove


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help=DATA_DIR_HELP)
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    add, remove = add_user_actions(actions)
    listing = actions.add_parser("list", help="list the users and their roles")
    tokens = actions.add_parser("tokens", help="list or revoke the scorer pages' device tokens")
    token_actions = tokens.add_subparsers(dest="token_action", metavar="ACTION", required=True)
    token_list = token_actions.add_parser("list", help="list device tokens (of USER)")
    token_list.add_argument("user", nargs="?")
    revoke = token_actions.add_parser("revoke", help="revoke a device token, or --all of USER's")
    revoke.add_argument("user")
    which = revoke.add_mutually_exclusive_group(required=True)
    which.add_argument("token_id", nargs="?", help="the token's id, as `tokens list` shows it")
    which.add_argument("--all", action="store_true", help="every token of USER")
    for action in (add, remove, listing, tokens, token_list, revoke):
        # Also after the action (`rallycast passwd list --data-dir D`); SUPPRESS keeps a value
        # given before it. (rallycast.cli adds --config the same way.)
        action.add_argument("--data-dir", default=argparse.SUPPRESS, help=DATA_DIR_HELP)
    for verb in (token_list, revoke):  # rallycast.cli adds --config one level down only
        verb.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                          help="settings file (its data_dir)")  # fmt: skip


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
    tokens = TokenFile(tokens_path(settings.password_file))
    try:
        if args.action == "tokens":
            return _tokens(args, tokens)
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
            _revoke_all(tokens, args.user)
            return 0
        # add
        if role_of(args.user, settings.service_user) is Role.NONE:
            print(
                f"note: {args.user!r} is neither a club id nor the service user:"
                " it can log in but has no rights",
                file=sys.stderr,
            )
        password = _read_password(args)
        if looks_like_token(password):
            raise PasswordFileError(
                "that is a device token, not a password (choose another, or use --generate)"
            )
        passwords.set(args.user, password)
        print(f"saved {args.user} in {passwords.path}", file=sys.stderr)
        # A new password: the devices signed in with the old one must sign in again.
        _revoke_all(tokens, args.user)
        return 0
    except (PasswordFileError, TokenFileError, OSError) as exc:
        print(f"rallycast passwd: {exc}", file=sys.stderr)
        return 1
    except (EOFError, KeyboardInterrupt):
        print("rallycast passwd: cancelled", file=sys.stderr)
        return 1


def _revoke_all(tokens: TokenFile, user: str) -> None:
    removed = tokens.revoke(user)
    if removed:
        print(f"revoked {len(removed)} device token(s) of {user}", file=sys.stderr)


def _tokens(args: argparse.Namespace, tokens: TokenFile) -> int:
    if args.token_action == "list":
        rows = [t for t in tokens.read() if args.user is None or t.user == args.user]
        # stdout: one "id<TAB>user<TAB>device<TAB>created<TAB>used" line per token.
        print(f"{len(rows)} device token(s) in {tokens.path}", file=sys.stderr)
        for t in rows:
            print(f"{t.id}\t{t.user}\t{t.device or '-'}\t{t.created}\t{t.used or 'never'}")
        return 0
    removed = tokens.revoke(args.user, None if args.all else args.token_id)
    if not removed:
        what = "device tokens" if args.all else f"device token {args.token_id}"
        print(
            f"rallycast passwd: no {what} of {args.user!r} (see `rallycast passwd tokens list`)",
            file=sys.stderr,
        )
        return 1
    for t in removed:
        print(f"revoked {t.id} ({t.user}, {t.device or '-'})")
    return 0
