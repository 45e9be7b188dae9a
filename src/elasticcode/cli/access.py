"""Who may do what in a network: ``login``, ``logout``, ``whoami``, ``user``, ``role``,
``token``, ``secret`` and ``audit``."""

from __future__ import annotations

import getpass
import os
import socket
import sys
import time
from typing import Any

import click

from ..errors import ElasticCodeError
from ..network import client
from ..network.client import Api
from ..units import parse_duration
from .options import CA_HELP, SERVER_HELP, _echo, json_option, server_option


def register(main: click.Group) -> None:
    """Add the commands of identities, secrets and the audit log."""
    for command in (login, logout, whoami, user, role, token, secret, audit):
        main.add_command(command)


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else "-"


def _secret_input(prompt: str, from_stdin: bool) -> str:
    value = sys.stdin.readline().rstrip("\n") if from_stdin else getpass.getpass(prompt)
    if not value:
        raise click.UsageError("nothing given")
    return value


# -- logging in ---------------------------------------------------------------------------------
@click.command()
@click.option("--server", default=None, metavar="URL", help=SERVER_HELP)
@click.option("--ca", default=None, metavar="FILE", help=CA_HELP)
@click.option("--user", "name", default=None, help="The user [default: your login name].")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
def login(server: str | None, ca: str | None, name: str | None, password_stdin: bool) -> None:
    """Log in to a server; its token is kept for later commands (in a file only you can
    read, see `elasticcode whoami`)."""
    api = Api(server, ca, token="-")
    name = name or getpass.getuser()
    password = _secret_input(f"password of {name} at {api.base}: ", password_stdin)
    api.headers = {}
    reply = api(
        "POST",
        "/auth/login",
        json={"user": name, "password": password, "name": f"cli on {socket.gethostname()}"},
    )
    path = client.save(api.base, token=reply["token"], user=name, ca=api.ca)
    click.echo(
        f"logged in to {api.base} as {name} (until {_when(reply['expires'])}; kept in {path})"
    )


@click.command()
@server_option
def logout(api: Api) -> None:
    """Revoke this login's token and forget it."""
    if api.token:
        try:
            api("POST", "/auth/logout")
        except ElasticCodeError as exc:  # revoked or expired already: forget it all the same
            click.echo(f"the server said: {exc}", err=True)
    gone = client.forget(api.base)
    click.echo(f"logged out of {api.base}" if gone else f"not logged in to {api.base}")


@click.command()
@server_option
@json_option
def whoami(api: Api, as_json: bool) -> None:
    """Who this machine's credential for the server is, and what it may do."""
    me = api("GET", "/auth/whoami")
    grants = ", ".join(f"{g['role']} on {g['flows']}" for g in me["grants"]) or "none"
    scoped = f"; token limited to {', '.join(me['scopes'])}" if me["scopes"] else ""
    _echo(me, as_json, [f"{me['user']} at {api.base}: {grants}{scoped}"])


# -- users and roles ------------------------------------------------------------------------------
@click.group()
def user() -> None:
    """The network's users and their grants."""


@user.command("list")
@server_option
@json_option
def user_list(api: Api, as_json: bool) -> None:
    rows = api("GET", "/users")

    def grants(u: dict[str, Any]) -> str:
        return ", ".join(f"{g['role']} on {g['flows']}" for g in u["grants"]) or "-"

    lines = [f"{u['name']:<20} {grants(u)}" for u in rows]
    _echo(rows, as_json, lines)


@user.command("add")
@click.argument("name")
@click.option("--role", default=None, help="Grant this role too.")
@click.option("--flows", default="*", show_default=True, help="The flows the role is on.")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.option("--no-password", is_flag=True, help="A user of API tokens only.")
@server_option
def user_add(
    name: str, role: str | None, flows: str, password_stdin: bool, no_password: bool, api: Api
) -> None:
    """Add a user (with a password, asked for, unless --no-password)."""
    password = None if no_password else _secret_input(f"password of {name}: ", password_stdin)
    api("POST", "/users", json={"name": name, "password": password})
    if role:
        api("POST", f"/users/{name}/grants", json={"role": role, "flows": flows})
    click.echo(f"user {name} added" + (f", {role} on {flows}" if role else ""))


@user.command("remove")
@click.argument("name")
@server_option
def user_remove(name: str, api: Api) -> None:
    """Remove a user, their grants and tokens."""
    api("DELETE", f"/users/{name}")
    click.echo(f"user {name} removed")


@user.command("password")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@server_option
def user_password(name: str, password_stdin: bool, api: Api) -> None:
    """Set a user's password (your own, or anyone's with user.manage)."""
    password = _secret_input(f"new password of {name}: ", password_stdin)
    api("PUT", f"/users/{name}/password", json={"password": password})
    click.echo(f"password of {name} set")


@user.command("grant")
@click.argument("name")
@click.argument("role_name", metavar="ROLE")
@click.option("--flows", default="*", show_default=True, help="A flow, a pattern (team-*) or *.")
@server_option
def user_grant(name: str, role_name: str, flows: str, api: Api) -> None:
    """Give NAME the role ROLE on the flows matching --flows."""
    api("POST", f"/users/{name}/grants", json={"role": role_name, "flows": flows})
    click.echo(f"user {name}: {role_name} on {flows}")


@user.command("revoke")
@click.argument("name")
@click.argument("role_name", metavar="ROLE")
@click.option("--flows", default="*", show_default=True)
@server_option
def user_revoke(name: str, role_name: str, flows: str, api: Api) -> None:
    api("DELETE", f"/users/{name}/grants", params={"role": role_name, "flows": flows})
    click.echo(f"user {name}: {role_name} on {flows} revoked")


@click.group()
def role() -> None:
    """Roles: the built-in viewer, operator, developer and admin, and your own."""


@role.command("list")
@server_option
@json_option
def role_list(api: Api, as_json: bool) -> None:
    """Every role and its privileges."""
    reply = api("GET", "/roles")
    lines = [f"{n:<12} {', '.join(p)}" for n, p in reply["roles"].items()]
    lines += ["", "privileges:"] + [f"  {n:<14} {what}" for n, what in reply["privileges"].items()]
    _echo(reply, as_json, lines)


@role.command("add")
@click.argument("name")
@click.argument("privileges", nargs=-1, required=True)
@server_option
def role_add(name: str, privileges: tuple[str, ...], api: Api) -> None:
    """Define a role made of PRIVILEGES (see `elasticcode role list`)."""
    api("POST", "/roles", json={"name": name, "privileges": list(privileges)})
    click.echo(f"role {name}: {', '.join(privileges)}")


@role.command("remove")
@click.argument("name")
@server_option
def role_remove(name: str, api: Api) -> None:
    api("DELETE", f"/roles/{name}")
    click.echo(f"role {name} removed")


# -- tokens -------------------------------------------------------------------------------------
@click.group()
def token() -> None:
    """Your API tokens, for scripts and CI ($ELASTICCODE_TOKEN)."""


@token.command("list")
@server_option
@json_option
def token_list(api: Api, as_json: bool) -> None:
    rows = api("GET", "/tokens")
    lines = [
        f"{t['id']}  {t['name']:<24} expires {_when(t['expires'])}  last used "
        f"{_when(t['last_used'])}{'  revoked' if t['revoked'] else ''}"
        + (f"  scopes {','.join(t['scopes'])}" if t["scopes"] else "")
        for t in rows
    ]
    _echo(rows, as_json, lines or ["no tokens"])


@token.command("create")
@click.argument("name")
@click.option("--expires", default="90d", show_default=True, help="e.g. 1h, 30d.")
@click.option("--scope", "scopes", multiple=True, help="A privilege it is limited to (repeat).")
@server_option
def token_create(name: str, expires: str, scopes: tuple[str, ...], api: Api) -> None:
    """Make a token; it is printed this once."""
    try:
        parse_duration(expires)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--expires") from None
    body = {"name": name, "expires": expires, "scopes": list(scopes) or None}
    reply = api("POST", "/tokens", json=body)
    click.echo(reply["token"])
    click.echo(f"token {reply['id']}, until {_when(reply['expires'])}; shown once", err=True)


@token.command("revoke")
@click.argument("token_id", metavar="ID")
@server_option
def token_revoke(token_id: str, api: Api) -> None:
    api("DELETE", f"/tokens/{token_id}")
    click.echo(f"token {token_id} revoked")


# -- secrets ------------------------------------------------------------------------------------
@click.group()
def secret() -> None:
    """The network's secrets: flows reference them as ${secret:NAME}; no one reads them back."""


@secret.command("list")
@server_option
@json_option
def secret_list(api: Api, as_json: bool) -> None:
    rows = api("GET", "/secrets")
    lines = [f"{s['name']:<24} set {_when(s['updated'])} by {s['updated_by']}" for s in rows]
    _echo(rows, as_json, lines or ["no secrets"])


@secret.command("set")
@click.argument("name")
@click.option("--value-stdin", is_flag=True, help="Read the value from standard input.")
@click.option("--from-env", metavar="VAR", help="Take the value from this environment variable.")
@server_option
def secret_set(name: str, value_stdin: bool, from_env: str | None, api: Api) -> None:
    """Store secret NAME (asked for, never on the command line)."""
    if from_env:
        value = os.environ.get(from_env)
        if not value:
            raise click.UsageError(f"${from_env} is not set")
    else:
        value = _secret_input(f"value of {name}: ", value_stdin)
    reply = api("PUT", f"/secrets/{name}", json={"value": value})
    click.echo(f"secret {name} {'set' if reply['new'] else 'changed'}")


@secret.command("remove")
@click.argument("name")
@server_option
def secret_remove(name: str, api: Api) -> None:
    api("DELETE", f"/secrets/{name}")
    click.echo(f"secret {name} removed")


@secret.command("keygen")
def secret_keygen() -> None:
    """Print a new key for the servers' ELASTICCODE_SECRET_KEY (keep it safe: without it the
    stored secrets cannot be read)."""
    from ..network.vault import new_key

    click.echo(new_key())


# -- the audit log ------------------------------------------------------------------------------
@click.command()
@click.option("--flow", default=None, help="Only this flow's changes.")
@click.option("--actor", default=None, help="Only this user's (or agent:NAME, leader).")
@click.option(
    "--kind", default=None, help="Only this kind (revision, flow, processor, agent, ...)."
)
@click.option("--since", default=None, help="Only the last such time (e.g. 1h, 7d).")
@click.option("--limit", default=200, show_default=True, type=click.IntRange(1, 5000))
@server_option
@json_option
def audit(
    flow: str | None,
    actor: str | None,
    kind: str | None,
    since: str | None,
    limit: int,
    api: Api,
    as_json: bool,
) -> None:
    """Every change made in the network: when, who, from where, what."""
    params: dict[str, str | int | float] = {"limit": limit}
    for key, value in (("flow", flow), ("actor", actor), ("kind", kind)):
        if value:
            params[key] = value
    if since:
        params["since"] = time.time() - parse_duration(since)
    rows = api("GET", "/audit", params=params)
    lines = [
        f"{_when(e['time'])}  {e['actor']:<16} {e['origin'] or '-':<15} "
        f"{e['kind']:<10} {e['flow'] or '-':<16} {e['text']}"
        for e in rows
    ]
    _echo(rows, as_json, lines or ["nothing recorded"])
