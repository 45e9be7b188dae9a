"""The state store's tables, in one metadata: the state of one-host runs, then the control
plane's (distributed mode). Their history is in ``migrations``; the newest migration matches
these definitions.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

# -- runs on one host (and the runs of deployed flows) ----------------------------------------

runs = sa.Table(
    "runs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("flow", sa.String(200), nullable=False, index=True),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("started", sa.Float, nullable=False),
    sa.Column("ended", sa.Float),
)

sources = sa.Table(
    "sources",
    metadata,
    sa.Column("run_id", sa.Integer, primary_key=True),
    sa.Column("processor", sa.String(200), primary_key=True),
    sa.Column("offset", sa.BigInteger, nullable=False, default=0),
    sa.Column("calls", sa.BigInteger, nullable=False, default=0),
    sa.Column("done", sa.Boolean, nullable=False, default=False),
)

workers = sa.Table(
    "workers",
    metadata,
    sa.Column("id", sa.String(200), primary_key=True),
    sa.Column("run_id", sa.Integer, nullable=False, index=True),
    sa.Column("processor", sa.String(200), nullable=False),
    sa.Column("instance", sa.Integer, nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("received", sa.BigInteger, nullable=False, default=0),
    sa.Column("emitted", sa.BigInteger, nullable=False, default=0),
    sa.Column("errors", sa.BigInteger, nullable=False, default=0),
    sa.Column("retried", sa.BigInteger, nullable=False, default=0),
    sa.Column("dead", sa.BigInteger, nullable=False, default=0),
    sa.Column("busy", sa.Float, nullable=False, default=0.0),
    sa.Column("holding", sa.Integer, nullable=False, default=0),
    sa.Column("updated", sa.Float, nullable=False),
    sa.Column("last_error", sa.Text),
    sa.Column("host", sa.String(200)),
    sa.Column("bytes_in", sa.BigInteger, nullable=False, default=0),
    sa.Column("bytes_out", sa.BigInteger, nullable=False, default=0),
    sa.Column("metrics", sa.Text),  # JSON: histograms, per-queue counts, depths read
)

attempts = sa.Table(
    "attempts",
    metadata,
    sa.Column("processor", sa.String(200), primary_key=True),
    sa.Column("message_id", sa.String(64), primary_key=True),
    sa.Column("count", sa.Integer, nullable=False),
)

kv = sa.Table(
    "kv",
    metadata,
    sa.Column("namespace", sa.String(200), primary_key=True),
    sa.Column("key", sa.String(500), primary_key=True),
    sa.Column("field", sa.String(200), primary_key=True),
    sa.Column("value", sa.LargeBinary, nullable=False),
)


code_pins = sa.Table(
    "code_pins",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("flow", sa.String(200), nullable=False),
    sa.Column("processor", sa.String(200), nullable=False),
    sa.Column("repo", sa.Text, nullable=False),
    sa.Column("ref", sa.String(500), nullable=False),
    sa.Column("commit", sa.String(64), nullable=False),
    sa.Column("resolved", sa.Float, nullable=False),
    sa.Index("code_pins_by_processor", "flow", "processor"),
)


# -- distributed mode: the control plane's desired and observed state ----------------------
flows = sa.Table(
    "flows",
    metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("revision", sa.Integer, nullable=False),
    #: The run the flow's workers report under and its sources keep their progress in.
    sa.Column("run_id", sa.Integer, nullable=False),
    sa.Column("running", sa.Boolean, nullable=False, default=True),
    sa.Column("updated", sa.Float, nullable=False),
)

flow_revisions = sa.Table(
    "flow_revisions",
    metadata,
    sa.Column("flow", sa.String(200), primary_key=True),
    sa.Column("revision", sa.Integer, primary_key=True),
    #: The flow as deployed (JSON), code references resolved.
    sa.Column("document", sa.Text, nullable=False),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("note", sa.Text, nullable=False, default=""),
)

processor_controls = sa.Table(
    "processor_controls",
    metadata,
    sa.Column("flow", sa.String(200), primary_key=True),
    sa.Column("processor", sa.String(200), primary_key=True),
    sa.Column("paused", sa.Boolean, nullable=False, default=False),
    #: Bumped by a restart: every instance is replaced, new ones first.
    sa.Column("restarts", sa.Integer, nullable=False, default=0),
    #: A processor that scales: the count the autoscaler decided last (None: where it starts).
    sa.Column("scaled", sa.Integer),
    #: A count set by hand (``processor scale``) that holds until released.
    sa.Column("pinned", sa.Integer),
)

agents = sa.Table(
    "agents",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("host", sa.String(200), nullable=False),
    sa.Column("cores", sa.Integer, nullable=False),
    sa.Column("memory", sa.BigInteger, nullable=False),
    sa.Column("capacity", sa.Integer, nullable=False),
    sa.Column("labels", sa.Text, nullable=False, default="{}"),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("registered", sa.Float, nullable=False),
    sa.Column("heartbeat", sa.Float, nullable=False),
    #: The generation of the agent's assignment: bumped whenever what it should run changes.
    sa.Column("assigned", sa.BigInteger, nullable=False, default=0),
    #: The generation the agent last said it runs.
    sa.Column("applied", sa.BigInteger, nullable=False, default=0),
    #: A digest of the assignment, to tell when it changed.
    sa.Column("digest", sa.String(64), nullable=False, default=""),
    #: Its workers as it last reported them (JSON).
    sa.Column("workers", sa.Text, nullable=False, default="[]"),
    #: The cores busy on its host (by anything) as it last measured them; None: not known.
    sa.Column("busy", sa.Float),
)

placements = sa.Table(
    "placements",
    metadata,
    sa.Column("flow", sa.String(200), primary_key=True),
    sa.Column("processor", sa.String(200), primary_key=True),
    sa.Column("instance", sa.Integer, primary_key=True),
    sa.Column("agent_id", sa.String(64), index=True),
    sa.Column("placed", sa.Float, nullable=False),
    #: The agent a rebalanced instance moves away from: it runs it too until it runs on
    #: ``agent_id`` (the new one up before the old one stops).
    sa.Column("leaving", sa.String(64), index=True),
)

leases = sa.Table(
    "leases",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("holder", sa.String(200), nullable=False),
    sa.Column("expires", sa.Float, nullable=False),
    #: Bumped whenever the lease changes hands.
    sa.Column("term", sa.BigInteger, nullable=False),
)

events = sa.Table(
    "events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("time", sa.Float, nullable=False),
    sa.Column("kind", sa.String(40), nullable=False),
    sa.Column("flow", sa.String(200)),
    sa.Column("text", sa.Text, nullable=False),
    #: who made the change (a user, ``agent:NAME``, ``leader``), and from where
    sa.Column("actor", sa.String(200)),
    sa.Column("origin", sa.String(200)),
)


# -- identities and secrets (see network/identity.py, network/vault.py) -------------------------
users = sa.Table(
    "users",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(200), nullable=False, unique=True),
    #: the argon2 hash of the password (None: the user logs in with tokens only)
    sa.Column("password", sa.Text),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("disabled", sa.Boolean, nullable=False, default=False),
)

roles = sa.Table(
    "roles",
    metadata,
    sa.Column("name", sa.String(100), primary_key=True),
    #: JSON list of privilege names
    sa.Column("privileges", sa.Text, nullable=False),
    sa.Column("created", sa.Float, nullable=False),
)

grants = sa.Table(
    "grants",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("user_id", sa.Integer, nullable=False, index=True),
    sa.Column("role", sa.String(100), nullable=False),
    #: the flows it is on: a name, a pattern (``team-*``) or ``*`` (every flow, and the network)
    sa.Column("flows", sa.String(200), nullable=False),
    sa.UniqueConstraint("user_id", "role", "flows", name="grants_once"),
)

tokens = sa.Table(
    "tokens",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    #: user, agent (an agent's own credential) or enrol (enrols agents)
    sa.Column("kind", sa.String(10), nullable=False),
    sa.Column("user_id", sa.Integer, index=True),
    sa.Column("agent_id", sa.String(64), index=True),
    sa.Column("name", sa.String(200), nullable=False),
    #: SHA-256 of the token's secret part
    sa.Column("secret", sa.String(64), nullable=False),
    #: JSON list of privileges the token is limited to (None: its user's)
    sa.Column("scopes", sa.Text),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("expires", sa.Float),
    sa.Column("last_used", sa.Float),
    #: enrolment tokens: how many more agents it enrols (None: no limit before it expires)
    sa.Column("uses_left", sa.Integer),
    sa.Column("revoked", sa.Boolean, nullable=False, default=False),
)

secrets = sa.Table(
    "secrets",
    metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    #: the value, encrypted (Fernet) under the servers' secret key
    sa.Column("value", sa.LargeBinary, nullable=False),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("updated", sa.Float, nullable=False),
    sa.Column("updated_by", sa.String(200), nullable=False),
)

worker_roles = sa.Table(
    "worker_roles",
    metadata,
    sa.Column("flow", sa.String(200), primary_key=True),
    #: the PostgreSQL role the flow's workers log in as (see network/workerdb.py)
    sa.Column("role", sa.String(63), nullable=False, unique=True),
    sa.Column("password", sa.String(64), nullable=False),
    sa.Column("created", sa.Float, nullable=False),
)

# -- metrics history --------------------------------------------------------------------------

metric_points = sa.Table(
    "metric_points",
    metadata,
    sa.Column("flow", sa.String(200), primary_key=True),
    sa.Column("resolution", sa.Integer, primary_key=True),  # seconds: 1, 60 or 3600
    sa.Column("at", sa.BigInteger, primary_key=True),  # start of the interval, epoch seconds
    sa.Column("kind", sa.String(20), primary_key=True),  # processor | connection
    sa.Column("name", sa.String(400), primary_key=True),
    sa.Column("received", sa.BigInteger, nullable=False),
    sa.Column("emitted", sa.BigInteger, nullable=False),
    sa.Column("errors", sa.BigInteger, nullable=False),
    sa.Column("retried", sa.BigInteger, nullable=False),
    sa.Column("dead", sa.BigInteger, nullable=False),
    sa.Column("bytes_in", sa.BigInteger, nullable=False),
    sa.Column("bytes_out", sa.BigInteger, nullable=False),
    sa.Column("busy", sa.Float, nullable=False),  # seconds spent in the processor
    sa.Column("instances", sa.Integer, nullable=False),  # most seen in the interval
    sa.Column("depth", sa.BigInteger, nullable=False),  # most seen in the interval
    sa.Column("hists", sa.Text),  # JSON: process, wait, latency histograms of the interval
)

# -- lineage ----------------------------------------------------------------------------------

#: One row per event in a traced message's life (see ``metrics.lineage``); no key of its own:
#: rows are only ever added (by workers), read by message id and parent, and expire by age.
lineage = sa.Table(
    "lineage",
    metadata,
    sa.Column("flow", sa.String(200), nullable=False),
    sa.Column("message_id", sa.String(64), nullable=False),
    sa.Column("event", sa.String(20), nullable=False),
    sa.Column("parent", sa.String(64)),
    sa.Column("processor", sa.String(200), nullable=False),
    sa.Column("instance", sa.Integer, nullable=False),
    sa.Column("host", sa.String(200), nullable=False),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("port", sa.String(200)),
    sa.Column("wait", sa.Float),  # seconds in its queue before this processor took it
    sa.Column("duration", sa.Float),  # seconds in the processor
    sa.Column("size", sa.Integer),  # encoded bytes
    sa.Column("attempt", sa.Integer),
    sa.Column("outputs", sa.Integer),  # messages it gave rise to here (>1: a fork)
    sa.Column("error", sa.Text),
    sa.Column("attributes", sa.Text),  # JSON: the attribute names (not their values)
    sa.Column("code", sa.String(64)),  # the processor's code commit, if from git
    sa.Column("revision", sa.Integer),  # the deployed flow's revision (none on one host)
    sa.Index("lineage_message", "flow", "message_id"),
    sa.Index("lineage_parent", "flow", "parent"),
    sa.Index("lineage_at", "flow", "at"),
)
