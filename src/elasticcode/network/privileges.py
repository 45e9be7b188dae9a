"""Who may do what: privileges, the built-in roles made of them, and a caller's grants.

A *privilege* names one kind of action. Some concern a flow (``flow.read``, ``flow.deploy``,
``code.deploy``, ``flow.operate``): a grant gives them on the flows whose names match its
pattern (``*`` for all, ``team-a-*``, or one name). The others concern the whole network
(agents, users, secrets, the audit log) and come only from a grant on ``*``.

Deploying code (inline, a command, git, requirements) is a privilege of its own
(``code.deploy``): a user who may change a flow's settings may not, by that alone, make every
agent run code of their choosing.

Roles are sets of privileges: four built in (below), and any a user with ``role.manage``
defines. An API token may carry scopes: then it can do only what its scopes and its user's
grants both allow.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ..errors import ElasticCodeError

#: privilege -> what it allows; the flow privileges first.
PRIVILEGES: dict[str, str] = {
    "flow.read": "see a flow: its revisions, processors, connections, workers, events",
    "flow.operate": "start and stop a flow; pause, resume, restart and scale its processors",
    "flow.deploy": "deploy revisions of a flow, roll back, change processors and connections",
    "code.deploy": "deploy code: inline, commands, git repositories, requirements",
    "flow.remove": "remove a flow",
    "agent.read": "see the agents",
    "agent.manage": "enrol agents and forget them",
    "secret.manage": "set and remove secrets (no one reads them back)",
    "user.read": "see users, roles and grants",
    "user.manage": "add and remove users, grant and revoke roles, revoke others' tokens",
    "role.manage": "define and remove roles",
    "audit.read": "read the audit log",
}
FLOW_PRIVILEGES = frozenset(
    {"flow.read", "flow.operate", "flow.deploy", "code.deploy", "flow.remove"}
)

_VIEWER = {"flow.read", "agent.read"}
_OPERATOR = _VIEWER | {"flow.operate"}
_DEVELOPER = _OPERATOR | {"flow.deploy", "code.deploy", "flow.remove"}
#: The built-in roles; they cannot be changed or removed.
ROLES: dict[str, frozenset[str]] = {
    "viewer": frozenset(_VIEWER),
    "operator": frozenset(_OPERATOR),
    "developer": frozenset(_DEVELOPER),
    "admin": frozenset(PRIVILEGES),
}


@dataclass(frozen=True, slots=True)
class Grant:
    """A role on the flows whose names match ``flows`` (``*``: every flow, and the network)."""

    role: str
    flows: str = "*"

    def covers(self, flow: str | None) -> bool:
        if self.flows == "*":
            return True
        return flow is not None and fnmatch.fnmatchcase(flow, self.flows)


@dataclass(frozen=True, slots=True)
class Caller:
    """Who makes a request: a user (through a password login or an API token) or an agent."""

    kind: str  # "user" or "agent"
    name: str
    user_id: int | None = None
    agent_id: str | None = None
    token_id: str | None = None
    grants: tuple[Grant, ...] = ()
    #: privileges the token is limited to (None: all of its user's)
    scopes: frozenset[str] | None = None
    #: role -> privileges, for the roles of ``grants``
    roles: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def may(self, privilege: str, flow: str | None = None) -> bool:
        """Whether the caller may do ``privilege`` (on ``flow``, for a flow privilege)."""
        if self.scopes is not None and privilege not in self.scopes:
            return False
        flow_wide = privilege in FLOW_PRIVILEGES
        for g in self.grants:
            if privilege not in self.roles.get(g.role, frozenset()):
                continue
            if g.flows == "*" or (flow_wide and g.covers(flow)):
                return True
        return False

    def flows_visible(self, names: Iterable[str]) -> list[str]:
        """The flows of ``names`` the caller may read."""
        return [n for n in names if self.may("flow.read", n)]

    @property
    def who(self) -> str:
        """The caller as the audit log names it."""
        return f"agent:{self.name}" if self.kind == "agent" else self.name


def role_privileges(custom: Mapping[str, Iterable[str]]) -> dict[str, frozenset[str]]:
    """Every role's privileges: the built-in ones and ``custom`` (name -> privileges)."""
    roles = dict(ROLES)
    for name, privileges in custom.items():
        roles.setdefault(name, frozenset(privileges))
    return roles


def check_privileges(names: Iterable[str]) -> list[str]:
    """``names`` if every one is a privilege; else an error naming the unknown ones."""
    names = list(names)
    unknown = [n for n in names if n not in PRIVILEGES]
    if unknown:
        raise ElasticCodeError(
            f"unknown privilege(s) {', '.join(map(repr, unknown))}; they are "
            f"{', '.join(PRIVILEGES)}"
        )
    return names
