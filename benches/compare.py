#!/usr/bin/env python3
"""Statistics and helpers for benches/compare.sh (standard library only, except `idle`).

  record  one pgbench run -> one JSON line: TPS, latency percentiles (per-transaction logs,
          --log) and proxy CPU per transaction (/proc tick samples) over the steady window,
          once every client has logged in
  idle    opens N idle client connections to a proxy and reports its VmRSS delta per client
  report  all runs -> the medians over rounds as text tables with ratios, plus a JSON file
"""
import argparse
import asyncio
import glob
import json
import math
import os
import re
import statistics
import sys
import time

# Display names and the order of the columns.
TARGETS = ["direct", "pgbouncer-debian", "pgbouncer-newest", "pgdecomp", "baseline"]
PROXIES = TARGETS[1:]


def percentile(sorted_values, q):
    """Nearest-rank percentile of an already sorted list (q in 0..100)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values) - 1e-9))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def read_log(prefix):
    """(completion time in s, latency in µs, client) of every transaction in pgbench's --log
    files PREFIX.<pid>[.<thread>].

    A line is `client_id transaction_no time script_no time_epoch time_us [...]`; failed or
    skipped transactions have a non-numeric time and are left out.
    """
    rows = []
    for path in glob.glob(glob.escape(prefix) + ".*"):
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 6 and parts[2].isdigit():
                    rows.append((int(parts[4]) + int(parts[5]) / 1e6, int(parts[2]), parts[0]))
    return rows


def read_samples(path):
    """(time in s, the proxy's CPU ticks, the machine's busy ticks or None, the proxy's
    user-space ticks or None) sampled while pgbench ran."""
    out = []
    if path and os.path.exists(path):
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) in (2, 3, 4):
                    machine = int(parts[2]) if len(parts) >= 3 else None
                    user = int(parts[3]) if len(parts) == 4 else None
                    out.append((float(parts[0]), int(parts[1]), machine, user))
    return sorted(out)


def steady_window(rows, samples):
    """The measurement window: from when every client had finished its first transaction (all
    logged in) to the last completion, narrowed to CPU samples when there are any. Returns
    (start, end, proxy ticks or None, machine ticks or None, proxy user ticks or None), or None
    when the window is under a second."""
    first = {}
    for t, _, client in rows:
        first[client] = min(t, first.get(client, t))
    start, end = max(first.values()), max(t for t, _, _ in rows)
    ticks = machine = user = None
    if samples:
        inside = [s for s in samples if start <= s[0] <= end]
        if len(inside) < 2:
            return None
        (start, a, ma, ua), (end, b, mb, ub) = inside[0], inside[-1]
        ticks = b - a
        if ma is not None and mb is not None:
            machine = mb - ma
        if ua is not None and ub is not None:
            user = ub - ua
    return (start, end, ticks, machine, user) if end - start >= 1.0 else None


def parse_pgbench(text):
    """TPS, processed transactions, failures and the latency average from pgbench's summary."""
    def grab(pattern, cast=float):
        m = re.search(pattern, text, re.M)
        return cast(m.group(1)) if m else None
    return {
        "tps_pgbench": grab(r"^tps = ([0-9.]+)"),
        "txns": grab(r"^number of transactions actually processed: (\d+)", int),
        "failed": grab(r"^number of failed transactions: (\d+)", int),
        "lat_avg_ms": grab(r"^latency average = ([0-9.]+) ms"),
        "conn_ms": grab(r"^(?:initial connection time|average connection time) = ([0-9.]+) ms"),
    }


def cmd_record(a):
    """TPS, latencies and CPU over the steady window (all clients logged in), or over the whole
    run (pgbench's own TPS, CPU of the whole run including logins) when there is none."""
    with open(a.output) as f:
        text = f.read()
    run = {"round": a.round, "clients": a.clients, "workload": a.workload, "target": a.target,
           "duration_s": a.duration, "ok": a.rc == 0}
    run.update(parse_pgbench(text))
    if not run["txns"] or (run["failed"] or 0) > 0:
        run["ok"] = False
    run["tps"] = run["tps_pgbench"]
    rows = read_log(a.log_prefix) if a.log_prefix else []
    # With -C every transaction is a login: there is no "all logged in" moment, so whole run.
    samples = read_samples(a.cpu_samples)
    window = steady_window(rows, samples) if rows and not a.whole_run else None
    if window:
        start, end, ticks, machine, user = window
        rows = [r for r in rows if start < r[0] <= end]
        run["window_s"] = round(end - start, 3)
        run["window_txns"] = len(rows)
        run["tps"] = round(len(rows) / (end - start), 1)
        if ticks is not None and a.hz and rows and a.target != "direct":
            run["cpu_us_per_txn"] = round(ticks / a.hz * 1e6 / len(rows), 2)
            if user is not None:
                # The proxy's own code (and its libraries); the rest is the kernel's work for it.
                run["cpu_user_us_per_txn"] = round(user / a.hz * 1e6 / len(rows), 2)
        if machine is not None and a.hz and rows:
            # Every process on the machine (servers, pgbench, the proxy, the kernel's work for
            # them): what a proxy costs the servers and the clients shows up here.
            run["machine_us_per_txn"] = round(machine / a.hz * 1e6 / len(rows), 2)
    lat = sorted(r[1] for r in rows)
    if lat:
        run["lat_samples"] = len(lat)
        run["lat_avg_ms_pgbench"] = run["lat_avg_ms"]
        run["lat_avg_ms"] = round(sum(lat) / len(lat) / 1000.0, 3)
        for q in (50, 90, 99, 99.9):
            key = "p" + str(q).replace(".", "_")
            run[key + "_ms"] = round(percentile(lat, q) / 1000.0, 3)
    if a.cpu_ticks is not None and a.hz and run["txns"]:
        run["cpu_s_whole_run"] = a.cpu_ticks / a.hz
        run["cpu_us_per_txn_whole_run"] = round(a.cpu_ticks / a.hz * 1e6 / run["txns"], 2)
        run.setdefault("cpu_us_per_txn", run["cpu_us_per_txn_whole_run"])
    machine = [m for _, _, m, _ in samples if m is not None]
    if not window and len(machine) >= 2 and a.hz and run["txns"]:
        run.setdefault("machine_us_per_txn",
                       round((machine[-1] - machine[0]) / a.hz * 1e6 / run["txns"], 2))
    print(json.dumps(run))
    print(f"    tps {fmt(run['tps'])}  avg {fmt(run['lat_avg_ms'], '{:.2f}')} ms"
          f"  p50 {fmt(run.get('p50_ms'), '{:.2f}')}  p99 {fmt(run.get('p99_ms'), '{:.2f}')}"
          f"  cpu {fmt(run.get('cpu_us_per_txn'), '{:.1f}')} us/txn"
          + (f"  (window {run['window_s']:.1f}s)" if window else "  (whole run)")
          + ("" if run["ok"] else "  FAILED"), file=sys.stderr)


def vm_rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


async def hold_asyncpg(a):
    import asyncpg
    gate = asyncio.Semaphore(a.concurrency)

    async def one():
        async with gate:
            c = await asyncpg.connect(host=a.host, port=a.port, user=a.user,
                                      password=a.password, database=a.dbname,
                                      statement_cache_size=0, timeout=20)
            if a.used:
                # A client that has run a transaction, as an application's pooled ones have.
                await c.fetchval("SELECT 1")
            return c
    tasks = [asyncio.ensure_future(one()) for _ in range(a.n)]
    # A proxy that stops accepting must not hold the run for n * timeout / concurrency.
    await asyncio.wait(tasks, timeout=a.deadline)
    good, errors = [], []
    for t in tasks:
        if not t.done():
            t.cancel()
            errors.append("not connected within the deadline")
        elif t.exception() is not None:
            errors.append(repr(t.exception()))
        else:
            good.append(t.result())
    await asyncio.sleep(a.settle)
    rss = vm_rss_kib(a.pid)
    # The connections are still usable: one round trip on a few of them.
    for c in good[:: max(1, len(good) // 5)]:
        await c.fetchval("SELECT 1")
    await asyncio.gather(*(c.close() for c in good), return_exceptions=True)
    return len(good), errors, rss


def hold_psycopg(a):
    import psycopg
    conns, errors = [], []
    for _ in range(a.n):
        try:
            conns.append(psycopg.connect(host=a.host, port=a.port, user=a.user,
                                         password=a.password, dbname=a.dbname, autocommit=True))
            if a.used:
                conns[-1].execute("SELECT 1")
        except Exception as e:  # noqa: BLE001 -- reported, not fatal
            errors.append(repr(e))
    time.sleep(a.settle)
    rss = vm_rss_kib(a.pid)
    for c in conns:
        c.close()
    return len(conns), errors, rss


def cmd_idle(a):
    before = vm_rss_kib(a.pid)
    try:
        import asyncpg  # noqa: F401
        client = "asyncpg"
        held, errors, after = asyncio.run(hold_asyncpg(a))
    except ImportError:
        client = "psycopg"
        held, errors, after = hold_psycopg(a)
    out = {"target": a.target, "clients": a.n, "held": held, "client_lib": client, "used": a.used,
           "rss_before_kib": before, "rss_after_kib": after,
           "kib_per_client": round((after - before) / held, 2) if held else None,
           "errors": len(errors), "first_error": errors[0] if errors else None}
    print(json.dumps(out))


def fmt(v, spec="{:.0f}"):
    return "-" if v is None else spec.format(v)


def ratio(a, b):
    return None if a is None or not b else a / b


def median_of(runs, key):
    vals = [r[key] for r in runs if r.get("ok") and r.get(key) is not None]
    return statistics.median(vals) if vals else None


def summarize(runs):
    """(clients, workload, target) -> medians over rounds, plus each run's value."""
    groups = {}
    for r in runs:
        groups.setdefault((r["clients"], r["workload"], r["target"]), []).append(r)
    out = {}
    for key, rs in groups.items():
        s = {k: median_of(rs, k) for k in
             ("tps", "lat_avg_ms", "p50_ms", "p99_ms", "p99_9_ms", "cpu_us_per_txn",
              "cpu_user_us_per_txn", "machine_us_per_txn")}
        s["runs"] = len(rs)
        s["failed_runs"] = sum(1 for r in rs if not r.get("ok"))
        s["tps_each"] = [r.get("tps") for r in rs]
        s["cpu_each"] = [r.get("cpu_us_per_txn") for r in rs]
        out[key] = s
    return out


def print_tables(summary, workloads, targets, na):
    present = [t for t in TARGETS if t in targets]
    proxies = [t for t in present if t in PROXIES]
    short = {"direct": "direct", "pgbouncer-debian": "pgb-deb", "pgbouncer-newest": "pgb-new",
             "pgdecomp": "pgdecomp", "baseline": "baseline"}
    pairs = [(b, short[b]) for b in ("pgbouncer-newest", "pgbouncer-debian", "direct", "baseline")
             if b in present]
    for clients in sorted({k[0] for k in summary}):
        def cell(w, t):
            return summary.get((clients, w, t), {})

        def na_or(w, t, text):
            return "n/a" if f"{w}:{t}" in na else text
        print(f"\n== {clients} clients: TPS (median over rounds) and pgdecomp's ratios")
        head = "".join(f"{short[t]:>10}" for t in present) + " |" + "".join(
            f"{'pgd/' + s:>13}" for _, s in pairs)
        print(f"{'workload':<10}{head}")
        for w in workloads:
            row = "".join(f"{na_or(w, t, fmt(cell(w, t).get('tps'))):>10}" for t in present)
            rat = "".join(f"{fmt(ratio(cell(w, 'pgdecomp').get('tps'), cell(w, b).get('tps')), '{:.2f}'):>13}"
                          for b, _ in pairs)
            print(f"{w:<10}{row} |{rat}")
        print(f"\n== {clients} clients: latency ms, average / p50 / p99 (per-transaction logs)")
        print(f"{'workload':<10}" + "".join(f" {short[t]:>23}" for t in present))
        for w in workloads:
            cells = []
            for t in present:
                c = cell(w, t)
                text = "/".join(fmt(c.get(k), "{:.2f}") for k in ("lat_avg_ms", "p50_ms", "p99_ms"))
                cells.append(f" {na_or(w, t, text):>23}")
            print(f"{w:<10}" + "".join(cells))
        if proxies:
            cpu_pairs = [(b, s) for b, s in pairs if b != "direct"]
            print(f"\n== {clients} clients: proxy CPU µs per transaction (utime+stime from /proc)")
            print(f"{'workload':<10}" + "".join(f"{short[t]:>10}" for t in proxies) + " |" + "".join(
                f"{'pgd/' + s:>13}" for _, s in cpu_pairs))
            for key, title in (("cpu_us_per_txn", None),
                               ("cpu_user_us_per_txn", "user space only (utime)")):
                if title:
                    if not any(cell(w, t).get(key) for w in workloads for t in proxies):
                        continue
                    print(f"   {title}")
                for w in workloads:
                    row = "".join(f"{na_or(w, t, fmt(cell(w, t).get(key), '{:.1f}')):>10}"
                                  for t in proxies)
                    rat = "".join(
                        f"{fmt(ratio(cell(w, 'pgdecomp').get(key), cell(w, b).get(key)), '{:.2f}'):>13}"
                        for b, _ in cpu_pairs)
                    print(f"{w:<10}{row} |{rat}")
        if any(cell(w, t).get("machine_us_per_txn") for w in workloads for t in present):
            print(f"\n== {clients} clients: machine CPU µs per transaction (all processes, /proc/stat)")
            print(f"{'workload':<10}{head}")
            for w in workloads:
                row = "".join(
                    f"{na_or(w, t, fmt(cell(w, t).get('machine_us_per_txn'), '{:.1f}')):>10}"
                    for t in present)
                rat = "".join(
                    f"{fmt(ratio(cell(w, 'pgdecomp').get('machine_us_per_txn'), cell(w, b).get('machine_us_per_txn')), '{:.2f}'):>13}"
                    for b, _ in pairs)
                print(f"{w:<10}{row} |{rat}")
        failed = [f"{w}/{t}" for (c, w, t), s in summary.items() if c == clients and s["failed_runs"]]
        if failed:
            print(f"failed runs (left out of the medians): {', '.join(sorted(failed))}")


def cmd_report(a):
    runs = [json.loads(l) for l in open(a.runs) if l.strip()]
    idle = [json.loads(l) for l in open(a.idle) if l.strip()] if a.idle and os.path.exists(a.idle) else []
    meta = json.load(open(a.meta))
    summary = summarize(runs)
    workloads = [w for w in meta.get("workloads", []) if any(k[1] == w for k in summary)]
    targets = {k[2] for k in summary}
    na = set(meta.get("not_applicable", []))
    print(f"\n{meta.get('title', '')}")
    if runs:
        print_tables(summary, workloads, targets, na)
    if idle:
        used = any(i.get("used") for i in idle)
        how = "each ran one query, then held" if used else "opened, held"
        print(f"\n== idle clients: VmRSS delta per idle client ({how}, then measured)")
        print(f"{'target':<18}{'clients':>8}{'held':>8}{'before MiB':>12}{'after MiB':>11}{'KiB/client':>12}")
        for i in idle:
            print(f"{i['target']:<18}{i['clients']:>8}{i['held']:>8}{i['rss_before_kib'] / 1024:>12.1f}"
                  f"{i['rss_after_kib'] / 1024:>11.1f}{fmt(i['kib_per_client'], '{:.2f}'):>12}"
                  + (f"   ({i['errors']} failed: {i['first_error']})" if i["errors"] else ""))
    result = dict(meta)
    result["runs"] = runs
    result["idle"] = idle
    result["summary"] = [dict(clients=c, workload=w, target=t, **s) for (c, w, t), s in sorted(summary.items())]
    with open(a.json, "w") as f:
        json.dump(result, f, indent=1)
    print(f"\nJSON: {a.json}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record")
    r.add_argument("--output", required=True, help="pgbench's stdout+stderr")
    r.add_argument("--rc", type=int, default=0)
    r.add_argument("--log-prefix", default="")
    r.add_argument("--cpu-ticks", type=int, help="the proxy's CPU ticks over the whole run")
    r.add_argument("--cpu-samples", help="lines of `time proxy-ticks machine-ticks` sampled during the run")
    r.add_argument("--hz", type=int)
    for k in ("round", "clients", "duration"):
        r.add_argument("--" + k, type=int, required=True)
    r.add_argument("--workload", required=True)
    r.add_argument("--whole-run", action="store_true", help="no steady window (pgbench -C)")
    r.add_argument("--target", required=True)
    i = sub.add_parser("idle")
    i.add_argument("--pid", type=int, required=True)
    i.add_argument("--target", required=True)
    i.add_argument("--n", type=int, required=True)
    i.add_argument("--host", default="127.0.0.1")
    i.add_argument("--port", type=int, required=True)
    i.add_argument("--user", default="gitlab")
    i.add_argument("--password", default="gitlab")
    i.add_argument("--dbname", default="gitlabhq_production")
    i.add_argument("--concurrency", type=int, default=64)
    i.add_argument("--settle", type=float, default=2.0, help="seconds between the last login and the RSS read")
    i.add_argument("--used", action="store_true", help="each connection runs one query before it is held")
    i.add_argument("--deadline", type=float, default=120.0, help="seconds to open all N")
    s = sub.add_parser("report")
    s.add_argument("--runs", required=True)
    s.add_argument("--idle")
    s.add_argument("--meta", required=True)
    s.add_argument("--json", required=True)
    a = p.parse_args()
    {"record": cmd_record, "idle": cmd_idle, "report": cmd_report}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
