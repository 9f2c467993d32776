#!/usr/bin/env python3
"""psycopg 3 and asyncpg programs of the driver conformance suite (tests/drivers.rs).

Usage: driver.py psycopg|asyncpg

Settings come from the environment (see tests/drivers/README.md): where pgdecomp listens, the
three logical databases, the metrics URL, which port is which server, a marker prefix for rows,
and the plan: which scenarios to run in which protocol mode. For every (mode, scenario) one JSON
line is printed with what was observed; tests/drivers.rs decides what is right.
"""

import asyncio
import json
import os
import sys
import time
import urllib.request

WATCHED = (
    "pgdecomp_cross_join_total",
    "pgdecomp_cross_database_modification_total",
    "pgdecomp_wrong_schema_total",
    "pgdecomp_locked_table_write_total",
    "pgdecomp_rejected_statements_total",
)

# Every statement the scenarios run, with PostgreSQL's $n placeholders.
SQL = {
    "ci_ins": "INSERT INTO ci_builds (name, status) VALUES ($1, 'driver') RETURNING id",
    "main_ins": "INSERT INTO projects (name) VALUES ($1) RETURNING id",
    "port": "SELECT inet_server_port()",
    "ci_sel": "SELECT inet_server_port() FROM ci_builds WHERE id >= $1 LIMIT 1",
    "main_sel": "SELECT inet_server_port() FROM projects WHERE id >= $1 LIMIT 1",
    "join": "SELECT count(*) FROM projects p JOIN ci_builds b ON b.id = p.id WHERE p.id >= $1",
    "ci_count": "SELECT count(*) FROM ci_builds WHERE name LIKE $1",
    "main_sleep": "SELECT pg_sleep(10) FROM projects WHERE id >= $1 LIMIT 1",
    "ci_sleep": "SELECT pg_sleep(10) FROM ci_builds WHERE id >= $1 LIMIT 1",
    # One simple-protocol Query holding a whole transaction ($1 and $2: the same marker).
    "multi": "BEGIN; INSERT INTO ci_builds (name, status) VALUES ($1, 'driver'); "
             "INSERT INTO projects (name) VALUES ($2); COMMIT",
}

SCENARIO_TIMEOUT = float(os.environ.get("PGD_SCENARIO_TIMEOUT", "60"))


def env(name, default=None):
    value = os.environ.get(name, default)
    if value is None:
        sys.exit(f"driver.py: {name} is not set")
    return value


NODES = {}
for pair in env("PGD_NODES").split(","):
    if pair:
        name, port = pair.split("=")
        NODES[int(port)] = name


def node(port):
    return NODES.get(int(port), f"port:{port}")


def metrics():
    url = os.environ.get("PGD_METRICS_URL", "")
    if not url:
        return {}
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        series, value = line.rsplit(" ", 1)
        if series.split("{", 1)[0] in WATCHED:
            out[series] = float(value)
    return out


def delta(before, after):
    out = {}
    for series in set(before) | set(after):
        d = after.get(series, 0.0) - before.get(series, 0.0)
        if d:
            out[series] = d
    return out


class Recorder:
    """Counts each step's outcomes: a server name, "ok", "rows:N", "cancelled" or "err:SQLSTATE"."""

    def __init__(self):
        self.steps = {}
        self.errors = {}

    def add(self, step, outcome, message=None):
        counts = self.steps.setdefault(step, {})
        counts[outcome] = counts.get(outcome, 0) + 1
        if message is not None and outcome not in self.errors:
            self.errors[outcome] = f"{step}: {message}"[:300]


def outcome_of(exc):
    sqlstate = getattr(exc, "sqlstate", None)
    if sqlstate:
        return f"err:{sqlstate}"
    return f"exc:{type(exc).__name__}"


async def step(rec, name, action, report="ok"):
    """Runs `action` and records its outcome under `name`; returns (ok, value)."""
    try:
        value = await action()
    except Exception as exc:  # noqa: BLE001 - every failure is an observation
        rec.add(name, outcome_of(exc), str(exc).strip())
        return False, exc
    if report == "port":
        rec.add(name, node(value))
    elif report == "rows":
        rec.add(name, f"rows:{value}")
    else:
        rec.add(name, "ok")
    return True, value


async def txn(rec, s, prefix, ops):
    """BEGIN; each (op, key, params, report); COMMIT, or ROLLBACK after the first failure."""
    ok, _ = await step(rec, prefix + "begin", s.begin)
    if ok:
        for op, key, params, report in ops:
            ok, _ = await step(rec, prefix + op, lambda: s.run(key, params), report)
            if not ok:
                break
    if ok:
        ok, _ = await step(rec, prefix + "commit", s.commit)
        return ok
    await step(rec, prefix + "rollback", s.rollback)
    return False


# ───────────────────────────── psycopg 3 ─────────────────────────────


def pct(sql):
    """$n placeholders to psycopg's %s (every statement here uses each $n once, in order)."""
    out = sql
    for n in range(9, 0, -1):
        out = out.replace(f"${n}", "%s")
    return out


class Psycopg:
    MODES = ("simple", "extended", "named", "named_all", "pipeline")

    def __init__(self, mode, conn):
        self.mode = mode
        self.conn = conn
        self.pipe = None

    @classmethod
    async def connect(cls, mode, dbname):
        import psycopg

        kwargs = dict(
            host=env("PGD_HOST"),
            port=env("PGD_PORT"),
            user=env("PGD_USER"),
            password=env("PGD_PASSWORD"),
            dbname=dbname,
            autocommit=True,
            connect_timeout=10,
        )
        if mode == "simple":
            # Client-side binding: every statement is a simple-protocol Query.
            kwargs.update(cursor_factory=psycopg.AsyncClientCursor, prepare_threshold=None)
        elif mode in ("extended", "pipeline"):
            # Statements with parameters: Parse/Bind/Execute of the unnamed statement.
            # BEGIN/COMMIT without parameters go as simple Queries, except in pipeline mode,
            # where psycopg sends them extended.
            kwargs.update(prepare_threshold=None)
        elif mode == "named":
            # prepare=True per statement (it needs a prepare_threshold, which is not None):
            # named from the first execution; BEGIN/COMMIT (prepare=False) simple Queries.
            kwargs.update(prepare_threshold=5)
        elif mode == "named_all":
            # Every statement, BEGIN and COMMIT included, is a named prepared statement.
            kwargs.update(prepare_threshold=0)
        else:
            raise ValueError(f"unknown psycopg mode {mode}")
        conn = await psycopg.AsyncConnection.connect(**kwargs)
        self = cls(mode, conn)
        if mode == "pipeline":
            self.pipe_cm = conn.pipeline()
            self.pipe = await self.pipe_cm.__aenter__()
        self.in_txn = False
        return self

    async def prepare(self, keys):
        pass  # psycopg prepares on first execution

    async def _exec(self, sql, params=None, prepare=None):
        if prepare is None and self.mode == "named":
            prepare = False
        return await self.conn.execute(sql, params, prepare=prepare)

    async def begin(self):
        await self._exec("BEGIN")
        self.in_txn = True

    async def commit(self):
        self.in_txn = False
        await self._exec("COMMIT")
        if self.pipe:
            await self.pipe.sync()

    async def rollback(self):
        self.in_txn = False
        if self.pipe:
            try:
                await self.pipe.sync()
            except Exception:  # noqa: BLE001 - the aborted pipeline reports the error again
                pass
        await self._exec("ROLLBACK")
        if self.pipe:
            await self.pipe.sync()

    async def run(self, key, params):
        prepare = True if self.mode == "named" else None
        cur = await self._exec(pct(SQL[key]), params or None, prepare)
        if self.pipe and not self.in_txn:
            # Outside a transaction each statement is its own batch up to Sync.
            await self.pipe.sync()
        # In pipeline mode fetching flushes the queued requests and waits for this result.
        row = await cur.fetchone()
        return row[0] if row else None

    async def command(self, sql):
        """A statement without parameters or rows (SAVEPOINT, RELEASE, ROLLBACK TO)."""
        await self._exec(sql)

    async def run_multi(self, key, params):
        """A multi-statement string: only the simple protocol (ClientCursor) takes one."""
        await self._exec(pct(SQL[key]), params)

    async def cancel_run(self, key, params, after):
        task = asyncio.ensure_future(self.run(key, params))
        await asyncio.sleep(after)
        await self.conn.cancel_safe(timeout=10)
        return await task

    async def copy_in(self, rows):
        cur = self.conn.cursor()
        async with cur.copy("COPY ci_builds (name, status) FROM STDIN") as copy:
            for row in rows:
                await copy.write_row(row)

    async def copy_out(self):
        cur = self.conn.cursor()
        n = 0
        async with cur.copy("COPY (SELECT name FROM projects WHERE id <= 3) TO STDOUT") as copy:
            async for _ in copy.rows():
                n += 1
        return n

    async def close(self):
        if self.pipe:
            try:
                await self.pipe_cm.__aexit__(None, None, None)
            except Exception:  # noqa: BLE001
                pass
        await self.conn.close()


# ───────────────────────────── asyncpg ─────────────────────────────


class Asyncpg:
    MODES = ("cache", "nocache", "prepared")

    def __init__(self, mode, conn):
        self.mode = mode
        self.conn = conn
        self.tr = None
        self.stmts = {}

    @classmethod
    async def connect(cls, mode, dbname):
        import asyncpg

        kwargs = dict(
            host=env("PGD_HOST"),
            port=int(env("PGD_PORT")),
            user=env("PGD_USER"),
            password=env("PGD_PASSWORD"),
            database=dbname,
            timeout=10,
            command_timeout=30,
        )
        if mode == "nocache":
            # The PgBouncer-compatible setting: unnamed statements, prepared on every call.
            kwargs.update(statement_cache_size=0)
        elif mode not in ("cache", "prepared"):
            raise ValueError(f"unknown asyncpg mode {mode}")
        return cls(mode, await asyncpg.connect(**kwargs))

    async def prepare(self, keys):
        # "prepared": explicit conn.prepare() before any transaction; executed inside later ones.
        if self.mode == "prepared":
            for key in keys:
                self.stmts[key] = await self.conn.prepare(SQL[key])

    async def begin(self):
        tr = self.conn.transaction()
        await tr.start()
        self.tr = tr

    async def commit(self):
        tr, self.tr = self.tr, None
        await tr.commit()

    async def rollback(self):
        tr, self.tr = self.tr, None
        if tr is None:
            await self.conn.execute("ROLLBACK")
        else:
            await tr.rollback()

    async def run(self, key, params, timeout=None):
        stmt = self.stmts.get(key)
        if stmt is not None:
            return await stmt.fetchval(*(params or []), timeout=timeout)
        return await self.conn.fetchval(SQL[key], *(params or []), timeout=timeout)

    async def command(self, sql):
        await self.conn.execute(sql)

    async def cancel_run(self, key, params, after):
        # asyncpg cancels the query (a CancelRequest) when the timeout expires.
        try:
            return await self.run(key, params, timeout=after)
        except asyncio.TimeoutError as exc:
            raise Cancelled() from exc

    async def copy_in(self, rows):
        await self.conn.copy_records_to_table("ci_builds", records=rows, columns=["name", "status"])

    async def copy_out(self):
        rows = []

        async def sink(chunk):
            rows.append(chunk)

        await self.conn.copy_from_query("SELECT name FROM projects WHERE id <= 3", output=sink)
        return b"".join(rows).count(b"\n")

    async def close(self):
        await self.conn.close(timeout=10)


class Cancelled(Exception):
    pass


# ───────────────────────────── scenarios ─────────────────────────────

N_ROUTE = 3
N_VIOLATIONS = 20


class Ctx:
    def __init__(self, adapter, mode, scenario):
        self.adapter = adapter
        self.mode = mode
        self.scenario = scenario
        self.sessions = []
        self.prefix = f"{env('PGD_RUN')}-{adapter.__name__.lower()}-{mode}-{scenario}"

    def marker(self, i):
        return f"{self.prefix}-{i}"

    async def session(self, db, prepare=()):
        dbname = env({"transparent": "PGD_DB", "main": "PGD_DB_MAIN", "ci": "PGD_DB_CI"}[db])
        s = await self.adapter.connect(self.mode, dbname)
        self.sessions.append(s)
        await s.prepare(prepare)
        return s

    async def close(self):
        for s in self.sessions:
            try:
                await asyncio.wait_for(s.close(), 10)
            except Exception:  # noqa: BLE001
                pass


ROUTE_KEYS = {
    "transparent": ("ci_ins", "main_ins", "port", "ci_sel", "main_sel"),
    "main": ("main_ins", "port", "main_sel"),
    "ci": ("ci_ins", "port", "ci_sel"),
}


async def route(ctx, rec, db):
    s = await ctx.session(db, ROUTE_KEYS[db])
    for i in range(N_ROUTE):
        if db in ("transparent", "ci"):
            await txn(rec, s, "ci_", [("ins", "ci_ins", [ctx.marker(f"ci-{i}")], "ok"),
                                      ("port", "port", None, "port")])
            await step(rec, "ci_read", lambda: s.run("ci_sel", [0]), "port")
        if db in ("transparent", "main"):
            await txn(rec, s, "main_", [("ins", "main_ins", [ctx.marker(f"main-{i}")], "ok"),
                                        ("port", "port", None, "port")])
            await step(rec, "main_read", lambda: s.run("main_sel", [0]), "port")


async def route_transparent(ctx, rec):
    await route(ctx, rec, "transparent")


async def route_main(ctx, rec):
    await route(ctx, rec, "main")


async def route_ci(ctx, rec):
    await route(ctx, rec, "ci")


async def after(ctx, rec, s, groups):
    """The same prepared statements in fresh transactions, after the loop (and its refusals)."""
    for g in groups:
        await txn(rec, s, f"after_{g}_", [("ins", f"{g}_ins", [ctx.marker(f"after-{g}")], "ok"),
                                          ("port", "port", None, "port")])


async def cross_db(ctx, rec, first, second):
    s = await ctx.session("transparent", ("ci_ins", "main_ins", "port"))
    for i in range(N_VIOLATIONS):
        m = ctx.marker(i)
        await txn(rec, s, "", [(f"{first}_ins", f"{first}_ins", [m], "ok"),
                               ("port", "port", None, "port"),
                               (f"{second}_ins", f"{second}_ins", [m], "ok")])
    await after(ctx, rec, s, ("main", "ci"))


async def cross_db_ci_main(ctx, rec):
    await cross_db(ctx, rec, "ci", "main")


async def cross_db_main_ci(ctx, rec):
    await cross_db(ctx, rec, "main", "ci")


async def cross_join(ctx, rec):
    s = await ctx.session("transparent", ("join", "main_ins", "ci_ins", "port"))
    for _ in range(N_VIOLATIONS // 2):
        await txn(rec, s, "", [("join_txn", "join", [0], "ok")])
        await step(rec, "join_auto", lambda: s.run("join", [0]))
    await after(ctx, rec, s, ("main", "ci"))


async def wrong_schema_ci(ctx, rec):
    s = await ctx.session("ci", ("main_sel", "ci_ins", "port"))
    for _ in range(N_VIOLATIONS):
        await txn(rec, s, "", [("main_sel", "main_sel", [0], "port")])
    await after(ctx, rec, s, ("ci",))


async def wrong_schema_main(ctx, rec):
    s = await ctx.session("main", ("ci_sel", "main_ins", "port"))
    for _ in range(N_VIOLATIONS):
        await txn(rec, s, "", [("ci_sel", "ci_sel", [0], "port")])
    await after(ctx, rec, s, ("main",))


async def two_conns(ctx, rec):
    """Overlapping transactions on two connections with their own prepared statements.

    Both transactions are open at once, so they need two server connections. Each connection
    prepares its statements in another order, so one client-side name (psycopg's _pg3_0,
    asyncpg's and pgJDBC's counters) means a different statement on each.
    """
    conns = [await ctx.session("transparent"), await ctx.session("transparent")]
    for i in range(N_VIOLATIONS):
        groups = ("ci", "main") if i % 2 == 0 else ("main", "ci")
        alive = [False, False]
        for c, s in enumerate(conns):
            alive[c], _ = await step(rec, f"{groups[c]}_begin", s.begin)
            if not alive[c]:
                await step(rec, f"{groups[c]}_rollback", s.rollback)
        for op in ("ins", "port"):
            for c, s in enumerate(conns):
                if not alive[c]:
                    continue
                g = groups[c]
                key, params, report = ((f"{g}_ins", [ctx.marker(f"{i}-{c}")], "ok") if op == "ins"
                                       else ("port", None, "port"))
                alive[c], _ = await step(rec, f"{g}_{op}", lambda: s.run(key, params), report)
                if not alive[c]:
                    await step(rec, f"{g}_rollback", s.rollback)
        for c, s in enumerate(conns):
            if alive[c]:
                await step(rec, f"{groups[c]}_commit", s.commit)


async def copy(ctx, rec):
    s = await ctx.session("transparent")
    rows = [(ctx.marker(i), "driver") for i in range(3)]
    ok, _ = await step(rec, "copy_begin", s.begin)
    if ok:
        ok, _ = await step(rec, "copy_in", lambda: s.copy_in(rows))
    if ok:
        ok, _ = await step(rec, "copy_port", lambda: s.run("port", None), "port")
    if ok:
        await step(rec, "copy_commit", s.commit)
    else:
        await step(rec, "copy_rollback", s.rollback)
    await txn(rec, s, "count_", [("rows", "ci_count", [ctx.prefix + "-%"], "rows")])
    await step(rec, "copy_out", s.copy_out, "rows")


async def savepoint(ctx, rec):
    """20 transactions: a ci write, then a main write inside a savepoint, undone by ROLLBACK TO
    SAVEPOINT when refused; the transaction goes on and commits its ci write."""
    s = await ctx.session("transparent", ("ci_ins", "main_ins", "port"))
    for i in range(N_VIOLATIONS):
        m = ctx.marker(i)
        ok, _ = await step(rec, "begin", s.begin)
        if ok:
            ok, _ = await step(rec, "ci_ins", lambda: s.run("ci_ins", [m]))
        if ok:
            ok, _ = await step(rec, "savepoint", lambda: s.command("SAVEPOINT drv"))
        if ok:
            inner, _ = await step(rec, "main_ins", lambda: s.run("main_ins", [m]))
            if inner:
                ok, _ = await step(rec, "release", lambda: s.command("RELEASE SAVEPOINT drv"))
            else:
                ok, _ = await step(rec, "rollback_to",
                                   lambda: s.command("ROLLBACK TO SAVEPOINT drv"))
        if ok:
            ok, _ = await step(rec, "port", lambda: s.run("port", None), "port")
        if ok:
            await step(rec, "commit", s.commit)
        else:
            await step(rec, "rollback", s.rollback)
    await after(ctx, rec, s, ("main", "ci"))


async def multi_statement(ctx, rec):
    """20 transactions each sent as one simple Query: BEGIN; ci write; main write; COMMIT."""
    s = await ctx.session("transparent")
    for i in range(N_VIOLATIONS):
        m = ctx.marker(i)
        ok, _ = await step(rec, "multi", lambda: s.run_multi("multi", [m, m]))
        if not ok:
            await step(rec, "rollback", s.rollback)
    await after(ctx, rec, s, ("main", "ci"))


async def cancel(ctx, rec):
    s = await ctx.session("transparent", ("main_sleep", "ci_sleep", "ci_ins", "port", "main_sel"))

    async def cancelled(key):
        started = time.monotonic()
        try:
            await s.cancel_run(key, [0], 0.5)
            outcome = "not_cancelled"
        except Cancelled:
            outcome = "cancelled"
        except Exception as exc:  # noqa: BLE001
            outcome = "cancelled" if getattr(exc, "sqlstate", None) == "57014" else exc
        rec.add("cancel_fast", "yes" if time.monotonic() - started < 5 else "no")
        if isinstance(outcome, Exception):
            raise outcome
        if outcome != "cancelled":
            raise RuntimeError("the query was not cancelled")

    await step(rec, "cancel_auto", lambda: cancelled("main_sleep"))
    await step(rec, "after_cancel_read", lambda: s.run("main_sel", [0]), "port")
    ok, _ = await step(rec, "cancel_begin", s.begin)
    if ok:
        ok, _ = await step(rec, "cancel_ins", lambda: s.run("ci_ins", [ctx.marker("txn")]))
    if ok:
        await step(rec, "cancel_txn", lambda: cancelled("ci_sleep"))
    await step(rec, "cancel_rollback", s.rollback)
    await after(ctx, rec, s, ("ci",))


async def prepare_only(ctx, rec):
    """Statements prepared and never executed: nothing ran, so nothing is refused or counted."""
    s = await ctx.session("main")
    await step(rec, "prepare_main_db", lambda: s.prepare(("ci_ins", "ci_sel", "main_ins", "port")))
    t = await ctx.session("transparent")
    await step(rec, "prepare_transparent", lambda: t.prepare(("join",)))
    await after(ctx, rec, s, ("main",))


SCENARIOS = {f.__name__: f for f in (
    prepare_only, savepoint, multi_statement,
    route_transparent, route_main, route_ci, cross_db_ci_main, cross_db_main_ci, cross_join,
    wrong_schema_ci, wrong_schema_main, two_conns, copy, cancel,
)}


async def run_scenario(adapter, mode, scenario):
    rec = Recorder()
    fatal = None
    started = time.monotonic()
    before = metrics()
    ctx = Ctx(adapter, mode, scenario)
    try:
        await asyncio.wait_for(SCENARIOS[scenario](ctx, rec), SCENARIO_TIMEOUT)
    except asyncio.TimeoutError:
        fatal = f"scenario did not finish within {SCENARIO_TIMEOUT}s"
    except Exception as exc:  # noqa: BLE001
        fatal = f"{type(exc).__name__}: {exc}"
    await ctx.close()
    line = {
        "driver": adapter.__name__.lower(),
        "mode": mode,
        "scenario": scenario,
        "steps": rec.steps,
        "errors": rec.errors,
        "metrics": delta(before, metrics()),
        "fatal": fatal,
        "secs": round(time.monotonic() - started, 3),
    }
    print(json.dumps(line, sort_keys=True), flush=True)


async def main():
    adapter = {"psycopg": Psycopg, "asyncpg": Asyncpg}[sys.argv[1]]
    # PGD_PLAN: "mode=scenario,scenario;mode=scenario"
    for part in env("PGD_PLAN").split(";"):
        mode, scenarios = part.split("=")
        for scenario in scenarios.split(","):
            if mode not in adapter.MODES or scenario not in SCENARIOS:
                print(json.dumps({"driver": adapter.__name__.lower(), "mode": mode,
                                  "scenario": scenario, "fatal": "unknown mode or scenario"}),
                      flush=True)
                continue
            await run_scenario(adapter, mode, scenario)


if __name__ == "__main__":
    asyncio.run(main())
