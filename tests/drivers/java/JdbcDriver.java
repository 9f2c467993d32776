// pgJDBC program of the driver conformance suite (tests/drivers.rs); compiled with javac at test
// time against Debian's /usr/share/java/postgresql.jar.
//
// Settings come from the environment (see tests/drivers/README.md). For every (mode, scenario)
// of PGD_PLAN one JSON line is printed with what was observed; tests/drivers.rs judges it.

import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.io.StringReader;
import java.io.StringWriter;
import java.net.HttpURLConnection;
import java.net.URL;
import java.nio.charset.StandardCharsets;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.TreeMap;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import org.postgresql.copy.CopyManager;
import org.postgresql.core.BaseConnection;

public class JdbcDriver {
    static final String[] WATCHED = {
        "pgdecomp_cross_join_total",
        "pgdecomp_cross_database_modification_total",
        "pgdecomp_wrong_schema_total",
        "pgdecomp_locked_table_write_total",
        "pgdecomp_rejected_statements_total",
    };

    static final Map<String, String> SQL = new HashMap<>();

    static {
        SQL.put("ci_ins", "INSERT INTO ci_builds (name, status) VALUES (?, 'driver') RETURNING id");
        SQL.put("main_ins", "INSERT INTO projects (name) VALUES (?) RETURNING id");
        SQL.put("port", "SELECT inet_server_port()");
        SQL.put("ci_sel", "SELECT inet_server_port() FROM ci_builds WHERE id >= ? LIMIT 1");
        SQL.put("main_sel", "SELECT inet_server_port() FROM projects WHERE id >= ? LIMIT 1");
        SQL.put("join", "SELECT count(*) FROM projects p JOIN ci_builds b ON b.id = p.id WHERE p.id >= ?");
        SQL.put("ci_count", "SELECT count(*) FROM ci_builds WHERE name LIKE ?");
        SQL.put("main_sleep", "SELECT pg_sleep(10) FROM projects WHERE id >= ? LIMIT 1");
        SQL.put("ci_sleep", "SELECT pg_sleep(10) FROM ci_builds WHERE id >= ? LIMIT 1");
    }

    static final List<String> MODES = List.of("simple", "unnamed", "named", "default", "explicit");
    static final int N_ROUTE = 3;
    static final int N_VIOLATIONS = 20;
    static final Map<Integer, String> NODES = new HashMap<>();

    static String env(String name) {
        String v = System.getenv(name);
        if (v == null) {
            System.err.println("JdbcDriver: " + name + " is not set");
            System.exit(2);
        }
        return v;
    }

    static String node(Object port) {
        int p = ((Number) port).intValue();
        return NODES.getOrDefault(p, "port:" + p);
    }

    // ───────────────────────────── metrics ─────────────────────────────

    static Map<String, Double> metrics() throws Exception {
        Map<String, Double> out = new TreeMap<>();
        String url = System.getenv().getOrDefault("PGD_METRICS_URL", "");
        if (url.isEmpty()) return out;
        HttpURLConnection c = (HttpURLConnection) new URL(url).openConnection();
        c.setConnectTimeout(10000);
        c.setReadTimeout(10000);
        try (BufferedReader r = new BufferedReader(new InputStreamReader(c.getInputStream(), StandardCharsets.UTF_8))) {
            String line;
            while ((line = r.readLine()) != null) {
                if (line.startsWith("#") || !line.contains(" ")) continue;
                int at = line.lastIndexOf(' ');
                String series = line.substring(0, at);
                String name = series.split("\\{", 2)[0];
                for (String w : WATCHED) {
                    if (w.equals(name)) out.put(series, Double.parseDouble(line.substring(at + 1)));
                }
            }
        }
        return out;
    }

    static Map<String, Object> delta(Map<String, Double> before, Map<String, Double> after) {
        Map<String, Object> out = new TreeMap<>();
        TreeMap<String, Double> all = new TreeMap<>(before);
        all.putAll(after);
        for (String s : all.keySet()) {
            double d = after.getOrDefault(s, 0.0) - before.getOrDefault(s, 0.0);
            if (d != 0) out.put(s, d);
        }
        return out;
    }

    // ───────────────────────────── recording ─────────────────────────────

    static class Recorder {
        final Map<String, Object> steps = new TreeMap<>();
        final Map<String, Object> errors = new TreeMap<>();

        @SuppressWarnings("unchecked")
        synchronized void add(String step, String outcome, String message) {
            Map<String, Object> counts = (Map<String, Object>) steps.computeIfAbsent(step, k -> new TreeMap<String, Object>());
            counts.put(outcome, ((Integer) counts.getOrDefault(outcome, 0)) + 1);
            if (message != null && !errors.containsKey(outcome)) {
                String m = step + ": " + message.trim();
                errors.put(outcome, m.length() > 300 ? m.substring(0, 300) : m);
            }
        }
    }

    interface Action {
        Object run() throws Exception;
    }

    static String outcomeOf(Throwable e) {
        if (e instanceof SQLException && ((SQLException) e).getSQLState() != null) {
            return "err:" + ((SQLException) e).getSQLState();
        }
        return "exc:" + e.getClass().getSimpleName();
    }

    static boolean step(Recorder rec, String name, Action action, String report) {
        Object value;
        try {
            value = action.run();
        } catch (Exception e) {
            rec.add(name, outcomeOf(e), String.valueOf(e.getMessage()));
            return false;
        }
        if (report.equals("port")) rec.add(name, node(value), null);
        else if (report.equals("rows")) rec.add(name, "rows:" + value, null);
        else rec.add(name, "ok", null);
        return true;
    }

    static Object[] op(String name, String key, Object param, String report) {
        return new Object[] {name, key, param, report};
    }

    static boolean txn(Recorder rec, Session s, String prefix, Object[]... ops) {
        boolean ok = step(rec, prefix + "begin", () -> { s.begin(); return null; }, "ok");
        if (ok) {
            for (Object[] o : ops) {
                String key = (String) o[1];
                Object param = o[2];
                ok = step(rec, prefix + o[0], () -> s.run(key, param), (String) o[3]);
                if (!ok) break;
            }
        }
        if (ok) return step(rec, prefix + "commit", () -> { s.commit(); return null; }, "ok");
        step(rec, prefix + "rollback", () -> { s.rollback(); return null; }, "ok");
        return false;
    }

    // ───────────────────────────── sessions ─────────────────────────────

    // simple:   preferQueryMode=simple; transactions by setAutoCommit(false).
    // unnamed:  prepareThreshold=0: every execution an unnamed Parse/Bind/Execute.
    // named:    prepareThreshold=-1: named server-side statements from the first execution.
    // default:  prepareThreshold=5 (the default): unnamed, then named past the fifth execution.
    // explicit: default threshold, autocommit on, transactions by executing BEGIN/COMMIT/ROLLBACK.
    // Except in "explicit", pgJDBC sends BEGIN itself, in the same batch as the first statement.
    static class Session {
        final String mode;
        final Connection conn;
        final Map<String, PreparedStatement> stmts = new HashMap<>();
        final Statement plain;

        Session(String mode, String db) throws SQLException {
            this.mode = mode;
            Properties p = new Properties();
            p.setProperty("user", env("PGD_USER"));
            p.setProperty("password", env("PGD_PASSWORD"));
            p.setProperty("connectTimeout", "10");
            p.setProperty("loginTimeout", "10");
            p.setProperty("socketTimeout", "30");
            switch (mode) {
                case "simple": p.setProperty("preferQueryMode", "simple"); break;
                case "unnamed": p.setProperty("prepareThreshold", "0"); break;
                case "named": p.setProperty("prepareThreshold", "-1"); break;
                case "default": case "explicit": break;
                default: throw new IllegalArgumentException("unknown mode " + mode);
            }
            String url = "jdbc:postgresql://" + env("PGD_HOST") + ":" + env("PGD_PORT") + "/" + db;
            conn = DriverManager.getConnection(url, p);
            plain = conn.createStatement();
        }

        // Statements are prepared once, before any transaction, and reused.
        PreparedStatement stmt(String key) throws SQLException {
            PreparedStatement s = stmts.get(key);
            if (s == null) {
                s = conn.prepareStatement(SQL.get(key));
                stmts.put(key, s);
            }
            return s;
        }

        void prepare(String... keys) throws SQLException {
            for (String k : keys) stmt(k);
        }

        void begin() throws SQLException {
            if (mode.equals("explicit")) plain.execute("BEGIN");
            else conn.setAutoCommit(false);
        }

        void commit() throws SQLException {
            if (mode.equals("explicit")) {
                plain.execute("COMMIT");
            } else {
                try {
                    conn.commit();
                } finally {
                    conn.setAutoCommit(true);
                }
            }
        }

        void rollback() throws SQLException {
            if (mode.equals("explicit")) {
                plain.execute("ROLLBACK");
            } else {
                try {
                    conn.rollback();
                } finally {
                    conn.setAutoCommit(true);
                }
            }
        }

        Object run(String key, Object param) throws SQLException {
            PreparedStatement s = stmt(key);
            if (param != null) s.setObject(1, param);
            try (ResultSet rs = s.executeQuery()) {
                return rs.next() ? rs.getObject(1) : null;
            }
        }

        Object cancelRun(String key, Object param, long afterMs) throws Exception {
            PreparedStatement s = stmt(key);
            Thread canceller = new Thread(() -> {
                try {
                    Thread.sleep(afterMs);
                    s.cancel();
                } catch (Exception e) {
                    // the query then runs to its end and the scenario reports it
                }
            });
            canceller.start();
            try {
                return run(key, param);
            } finally {
                canceller.join(10000);
            }
        }

        void copyIn(List<String> names) throws Exception {
            StringBuilder data = new StringBuilder();
            for (String n : names) data.append(n).append("\tdriver\n");
            CopyManager cm = new CopyManager(conn.unwrap(BaseConnection.class));
            cm.copyIn("COPY ci_builds (name, status) FROM STDIN", new StringReader(data.toString()));
        }

        long copyOut() throws Exception {
            CopyManager cm = new CopyManager(conn.unwrap(BaseConnection.class));
            StringWriter w = new StringWriter();
            return cm.copyOut("COPY (SELECT name FROM projects WHERE id <= 3) TO STDOUT", w);
        }

        void close() {
            try {
                conn.close();
            } catch (SQLException e) {
                // closing is best effort
            }
        }
    }

    // ───────────────────────────── scenarios ─────────────────────────────

    static class Ctx {
        final String mode;
        final String prefix;
        final List<Session> sessions = new ArrayList<>();

        Ctx(String mode, String scenario) {
            this.mode = mode;
            this.prefix = env("PGD_RUN") + "-jdbc-" + mode + "-" + scenario;
        }

        String marker(Object i) {
            return prefix + "-" + i;
        }

        Session session(String db, String... prepare) throws SQLException {
            String name = db.equals("main") ? env("PGD_DB_MAIN") : db.equals("ci") ? env("PGD_DB_CI") : env("PGD_DB");
            Session s = new Session(mode, name);
            sessions.add(s);
            s.prepare(prepare);
            return s;
        }

        void close() {
            for (Session s : sessions) s.close();
        }
    }

    interface Scenario {
        void run(Ctx ctx, Recorder rec) throws Exception;
    }

    static void route(Ctx ctx, Recorder rec, String db) throws Exception {
        Session s = db.equals("main") ? ctx.session(db, "main_ins", "port", "main_sel")
            : db.equals("ci") ? ctx.session(db, "ci_ins", "port", "ci_sel")
            : ctx.session(db, "ci_ins", "main_ins", "port", "ci_sel", "main_sel");
        for (int i = 0; i < N_ROUTE; i++) {
            if (db.equals("transparent") || db.equals("ci")) {
                txn(rec, s, "ci_", op("ins", "ci_ins", ctx.marker("ci-" + i), "ok"), op("port", "port", null, "port"));
                step(rec, "ci_read", () -> s.run("ci_sel", 0), "port");
            }
            if (db.equals("transparent") || db.equals("main")) {
                txn(rec, s, "main_", op("ins", "main_ins", ctx.marker("main-" + i), "ok"), op("port", "port", null, "port"));
                step(rec, "main_read", () -> s.run("main_sel", 0), "port");
            }
        }
    }

    static void after(Ctx ctx, Recorder rec, Session s, String... groups) {
        for (String g : groups) {
            txn(rec, s, "after_" + g + "_", op("ins", g + "_ins", ctx.marker("after-" + g), "ok"), op("port", "port", null, "port"));
        }
    }

    static void crossDb(Ctx ctx, Recorder rec, String first, String second) throws Exception {
        Session s = ctx.session("transparent", "ci_ins", "main_ins", "port");
        for (int i = 0; i < N_VIOLATIONS; i++) {
            String m = ctx.marker(i);
            txn(rec, s, "", op(first + "_ins", first + "_ins", m, "ok"), op("port", "port", null, "port"),
                op(second + "_ins", second + "_ins", m, "ok"));
        }
        after(ctx, rec, s, "main", "ci");
    }

    static final Map<String, Scenario> SCENARIOS = new LinkedHashMap<>();

    static {
        SCENARIOS.put("route_transparent", (ctx, rec) -> route(ctx, rec, "transparent"));
        SCENARIOS.put("route_main", (ctx, rec) -> route(ctx, rec, "main"));
        SCENARIOS.put("route_ci", (ctx, rec) -> route(ctx, rec, "ci"));
        SCENARIOS.put("cross_db_ci_main", (ctx, rec) -> crossDb(ctx, rec, "ci", "main"));
        SCENARIOS.put("cross_db_main_ci", (ctx, rec) -> crossDb(ctx, rec, "main", "ci"));
        SCENARIOS.put("cross_join", (ctx, rec) -> {
            Session s = ctx.session("transparent", "join", "ci_ins", "main_ins", "port");
            for (int i = 0; i < N_VIOLATIONS / 2; i++) {
                txn(rec, s, "", op("join_txn", "join", 0, "ok"));
                step(rec, "join_auto", () -> s.run("join", 0), "ok");
            }
            after(ctx, rec, s, "main", "ci");
        });
        SCENARIOS.put("wrong_schema_ci", (ctx, rec) -> {
            Session s = ctx.session("ci", "main_sel", "ci_ins", "port");
            for (int i = 0; i < N_VIOLATIONS; i++) txn(rec, s, "", op("main_sel", "main_sel", 0, "port"));
            after(ctx, rec, s, "ci");
        });
        SCENARIOS.put("wrong_schema_main", (ctx, rec) -> {
            Session s = ctx.session("main", "ci_sel", "main_ins", "port");
            for (int i = 0; i < N_VIOLATIONS; i++) txn(rec, s, "", op("ci_sel", "ci_sel", 0, "port"));
            after(ctx, rec, s, "main");
        });
        // Overlapping transactions on two connections (so two server connections), each
        // preparing its statements in another order, so S_1, S_2... differ between them.
        SCENARIOS.put("two_conns", (ctx, rec) -> {
            Session[] conns = {ctx.session("transparent"), ctx.session("transparent")};
            for (int i = 0; i < N_VIOLATIONS; i++) {
                String[] groups = i % 2 == 0 ? new String[] {"ci", "main"} : new String[] {"main", "ci"};
                boolean[] alive = new boolean[2];
                for (int c = 0; c < 2; c++) {
                    Session s = conns[c];
                    alive[c] = step(rec, groups[c] + "_begin", () -> { s.begin(); return null; }, "ok");
                    if (!alive[c]) step(rec, groups[c] + "_rollback", () -> { s.rollback(); return null; }, "ok");
                }
                for (String op : new String[] {"ins", "port"}) {
                    for (int c = 0; c < 2; c++) {
                        if (!alive[c]) continue;
                        Session s = conns[c];
                        String g = groups[c];
                        String key = op.equals("ins") ? g + "_ins" : "port";
                        Object param = op.equals("ins") ? ctx.marker(i + "-" + c) : null;
                        alive[c] = step(rec, g + "_" + op, () -> s.run(key, param), op.equals("ins") ? "ok" : "port");
                        if (!alive[c]) step(rec, g + "_rollback", () -> { s.rollback(); return null; }, "ok");
                    }
                }
                for (int c = 0; c < 2; c++) {
                    Session s = conns[c];
                    if (alive[c]) step(rec, groups[c] + "_commit", () -> { s.commit(); return null; }, "ok");
                }
            }
        });
        SCENARIOS.put("copy", (ctx, rec) -> {
            Session s = ctx.session("transparent", "ci_count", "port");
            List<String> names = List.of(ctx.marker(0), ctx.marker(1), ctx.marker(2));
            boolean ok = step(rec, "copy_begin", () -> { s.begin(); return null; }, "ok");
            if (ok) ok = step(rec, "copy_in", () -> { s.copyIn(names); return null; }, "ok");
            if (ok) ok = step(rec, "copy_port", () -> s.run("port", null), "port");
            if (ok) step(rec, "copy_commit", () -> { s.commit(); return null; }, "ok");
            else step(rec, "copy_rollback", () -> { s.rollback(); return null; }, "ok");
            txn(rec, s, "count_", op("rows", "ci_count", ctx.prefix + "-%", "rows"));
            step(rec, "copy_out", s::copyOut, "rows");
        });
        SCENARIOS.put("cancel", (ctx, rec) -> {
            Session s = ctx.session("transparent", "main_sleep", "ci_sleep", "ci_ins", "port", "main_sel");
            step(rec, "cancel_auto", () -> cancelled(rec, s, "main_sleep"), "ok");
            step(rec, "after_cancel_read", () -> s.run("main_sel", 0), "port");
            boolean ok = step(rec, "cancel_begin", () -> { s.begin(); return null; }, "ok");
            if (ok) ok = step(rec, "cancel_ins", () -> s.run("ci_ins", ctx.marker("txn")), "ok");
            if (ok) step(rec, "cancel_txn", () -> cancelled(rec, s, "ci_sleep"), "ok");
            step(rec, "cancel_rollback", () -> { s.rollback(); return null; }, "ok");
            after(ctx, rec, s, "ci");
        });
    }

    static Object cancelled(Recorder rec, Session s, String key) throws Exception {
        long started = System.nanoTime();
        try {
            s.cancelRun(key, 0, 500);
        } catch (SQLException e) {
            if (!"57014".equals(e.getSQLState())) throw e;
            return null;
        } finally {
            rec.add("cancel_fast", (System.nanoTime() - started) < 5_000_000_000L ? "yes" : "no", null);
        }
        throw new IllegalStateException("the query was not cancelled");
    }

    // ───────────────────────────── output ─────────────────────────────

    static String json(Object v) {
        if (v == null) return "null";
        if (v instanceof String) {
            StringBuilder b = new StringBuilder("\"");
            for (char c : ((String) v).toCharArray()) {
                if (c == '"' || c == '\\') b.append('\\').append(c);
                else if (c < 0x20) b.append(String.format("\\u%04x", (int) c));
                else b.append(c);
            }
            return b.append('"').toString();
        }
        if (v instanceof Map) {
            StringBuilder b = new StringBuilder("{");
            boolean first = true;
            for (Map.Entry<?, ?> e : ((Map<?, ?>) v).entrySet()) {
                if (!first) b.append(',');
                first = false;
                b.append(json(String.valueOf(e.getKey()))).append(':').append(json(e.getValue()));
            }
            return b.append('}').toString();
        }
        return String.valueOf(v);
    }

    static void runScenario(ExecutorService pool, String mode, String scenario) throws Exception {
        Recorder rec = new Recorder();
        String fatal = null;
        long started = System.nanoTime();
        Map<String, Double> before = metrics();
        Ctx ctx = new Ctx(mode, scenario);
        Future<?> f = pool.submit(() -> {
            SCENARIOS.get(scenario).run(ctx, rec);
            return null;
        });
        long limit = Long.parseLong(System.getenv().getOrDefault("PGD_SCENARIO_TIMEOUT", "60"));
        try {
            f.get(limit, TimeUnit.SECONDS);
        } catch (TimeoutException e) {
            f.cancel(true);
            fatal = "scenario did not finish within " + limit + "s";
        } catch (Exception e) {
            Throwable cause = e.getCause() != null ? e.getCause() : e;
            fatal = cause.getClass().getSimpleName() + ": " + cause.getMessage();
        }
        ctx.close();
        Map<String, Object> line = new TreeMap<>();
        line.put("driver", "jdbc");
        line.put("mode", mode);
        line.put("scenario", scenario);
        synchronized (rec) {
            line.put("steps", rec.steps);
            line.put("errors", rec.errors);
        }
        line.put("metrics", delta(before, metrics()));
        line.put("fatal", fatal);
        line.put("secs", (System.nanoTime() - started) / 1e9);
        System.out.println(json(line));
        System.out.flush();
    }

    public static void main(String[] args) throws Exception {
        for (String pair : env("PGD_NODES").split(",")) {
            if (pair.isEmpty()) continue;
            String[] kv = pair.split("=");
            NODES.put(Integer.parseInt(kv[1]), kv[0]);
        }
        ExecutorService pool = Executors.newCachedThreadPool(r -> {
            Thread t = new Thread(r);
            t.setDaemon(true);
            return t;
        });
        for (String part : env("PGD_PLAN").split(";")) {
            String[] ms = part.split("=");
            for (String scenario : ms[1].split(",")) {
                if (!MODES.contains(ms[0]) || !SCENARIOS.containsKey(scenario)) {
                    Map<String, Object> line = new TreeMap<>();
                    line.put("driver", "jdbc");
                    line.put("mode", ms[0]);
                    line.put("scenario", scenario);
                    line.put("fatal", "unknown mode or scenario");
                    System.out.println(json(line));
                    continue;
                }
                runScenario(pool, ms[0], scenario);
            }
        }
        System.exit(0);
    }
}
