//! TLS on both sides (issue 13, in part), with real clients and a real server: psql with
//! sslmode=verify-full against a test CA through pgdecomp, clients without TLS refused under
//! client_tls_mode = require, pgdecomp to a PostgreSQL that accepts only hostssl logins with
//! verify-full, and certificate rotation by reload under pgbench load with no failed transaction.

mod common;

use common::cluster::{run_bounded, running_as_root, Kind, Topology, BOUND, DATABASE};
use common::proxy::{Proxy, ADMIN, GITLAB};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn openssl(dir: &Path, args: &[&str]) {
    let out = run_bounded(
        Command::new("openssl").args(args).current_dir(dir),
        "",
        BOUND,
    );
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA named `name` and a server certificate for 127.0.0.1 / localhost signed by it:
/// `<name>-ca.crt`, `<name>-server.crt`, `<name>-server.key` in `dir`.
fn make_certs(dir: &Path, name: &str) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let (ca_key, ca) = (format!("{name}-ca.key"), format!("{name}-ca.crt"));
    let (key, csr, crt) = (
        format!("{name}-server.key"),
        format!("{name}-server.csr"),
        format!("{name}-server.crt"),
    );
    let subject = format!("/CN=pgdecomp test CA {name}");
    let mut args = vec!["req", "-x509"];
    args.extend(ec);
    args.extend([
        "-keyout", &ca_key, "-out", &ca, "-days", "2", "-subj", &subject,
    ]);
    openssl(dir, &args);
    let mut args = vec!["req"];
    args.extend(ec);
    args.extend(["-keyout", &key, "-out", &csr, "-subj", "/CN=localhost"]);
    openssl(dir, &args);
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            &crt,
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ],
    );
}

fn cert_dir(topo: &Topology) -> PathBuf {
    let dir = topo.temp_dir();
    make_certs(&dir, "one");
    make_certs(&dir, "two");
    dir
}

fn psql(proxy: &Proxy, conninfo: &str, sql: &str) -> Output {
    psql_as(proxy, GITLAB, DATABASE, conninfo, sql)
}

fn psql_as(
    proxy: &Proxy,
    (user, password): (&str, &str),
    db: &str,
    conninfo: &str,
    sql: &str,
) -> Output {
    let dsn = format!(
        "host=127.0.0.1 port={} user={user} dbname={db} {conninfo}",
        proxy.port()
    );
    run_bounded(
        Command::new("psql")
            .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-d", &dsn, "-c", sql])
            .env("PGPASSWORD", password),
        "",
        BOUND,
    )
}

fn client_tls(dir: &Path, name: &str) -> String {
    format!(
        "client_tls_mode = \"require\"\nclient_tls_cert_file = \"{}\"\nclient_tls_key_file = \"{}\"",
        dir.join(format!("{name}-server.crt")).display(),
        dir.join(format!("{name}-server.key")).display()
    )
}

/// The TLS keys are top-level: they go before the first table of the generated config.
fn with_top_level(config: String, keys: &str) -> String {
    format!("{keys}\n{config}")
}

#[test]
fn clients_verify_full_through_pgdecomp_and_plaintext_is_refused() {
    let topo = Topology::shared(Kind::MainOnly);
    let dir = cert_dir(topo);
    let config = common::proxy::ProxyConfig::new(topo).build();
    let proxy = Proxy::start(&with_top_level(config, &client_tls(&dir, "one")));
    let ca = dir.join("one-ca.crt");
    let verify = format!("sslmode=verify-full sslrootcert={}", ca.display());
    let out = psql(&proxy, &verify, "select count(*) from projects");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "5");
    // Another CA's certificate does not verify.
    let other = format!(
        "sslmode=verify-full sslrootcert={}",
        dir.join("two-ca.crt").display()
    );
    let out = psql(&proxy, &other, "select 1");
    assert!(!out.status.success());
    // No TLS: refused with SQLSTATE 28000.
    let out = psql(&proxy, "sslmode=disable", "select 1");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("SSL required"), "{err}");
    // The admin console is served through the same handshake: TLS verified, plaintext refused.
    let out = psql_as(&proxy, ADMIN, "pgdecomp", &verify, "SHOW VERSION");
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(
        version.contains("pgdecomp"),
        "{version} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = psql_as(&proxy, ADMIN, "pgdecomp", "sslmode=disable", "SHOW VERSION");
    assert!(!out.status.success(), "the admin console without TLS");
}

#[test]
fn certificates_rotate_on_reload_under_pgbench_load() {
    let topo = Topology::shared(Kind::MainOnly);
    let dir = cert_dir(topo);
    let config = common::proxy::ProxyConfig::new(topo).build();
    let proxy = Proxy::start(&with_top_level(config.clone(), &client_tls(&dir, "one")));
    let script = dir.join("read.sql");
    std::fs::write(&script, "select count(*) from projects;\n").expect("write script");
    // -C: a new TLS login per transaction, so logins straddle the reload.
    let pgbench = Command::new("pgbench")
        .args([
            "-n",
            "-c",
            "4",
            "-j",
            "2",
            "-T",
            "6",
            "-C",
            "-h",
            "127.0.0.1",
            "-p",
        ])
        .arg(proxy.port().to_string())
        .args(["-U", GITLAB.0, "-f"])
        .arg(&script)
        .arg(DATABASE)
        .env("PGPASSWORD", GITLAB.1)
        .env("PGSSLMODE", "require")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn pgbench");
    std::thread::sleep(std::time::Duration::from_secs(2));
    std::fs::write(
        proxy.config_path(),
        with_top_level(config, &client_tls(&dir, "two")),
    )
    .expect("rewrite config");
    proxy.reload();
    std::thread::sleep(std::time::Duration::from_secs(1));
    let two = format!(
        "sslmode=verify-full sslrootcert={}",
        dir.join("two-ca.crt").display()
    );
    let out = psql(&proxy, &two, "select 1");
    assert!(
        out.status.success(),
        "the new certificate after reload: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let one = format!(
        "sslmode=verify-full sslrootcert={}",
        dir.join("one-ca.crt").display()
    );
    assert!(
        !psql(&proxy, &one, "select 1").status.success(),
        "the old one is gone"
    );
    let out = pgbench.wait_with_output().expect("pgbench");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        report.contains("number of failed transactions: 0"),
        "{report}"
    );
    eprintln!("{report}");
}

/// Copies the server certificate into the data directory, owned as the server needs it, and
/// lets TCP logins in only over TLS.
fn require_tls_on_server(topo: &Topology, port: u16, dir: &Path) {
    let data = PathBuf::from(topo.psql(port, "postgres", "show data_directory"));
    for (from, to) in [
        ("one-server.crt", "server.crt"),
        ("one-server.key", "server.key"),
    ] {
        std::fs::copy(dir.join(from), data.join(to)).expect("copy certificate");
        if running_as_root() {
            let ok = Command::new("chown")
                .arg("postgres:postgres")
                .arg(data.join(to))
                .status();
            assert!(ok.is_ok_and(|s| s.success()));
        }
    }
    let ok = Command::new("chmod")
        .arg("600")
        .arg(data.join("server.key"))
        .status();
    assert!(ok.is_ok_and(|s| s.success()));
    let hba = topo.psql(port, "postgres", "show hba_file");
    std::fs::write(
        &hba,
        "local all all trust\nhostssl all all 127.0.0.1/32 scram-sha-256\nhost all all 127.0.0.1/32 reject\n",
    )
    .expect("write pg_hba.conf");
    topo.psql(port, "postgres", "alter system set ssl = on");
    topo.psql(port, "postgres", "select pg_reload_conf()");
    std::thread::sleep(std::time::Duration::from_millis(500));
}

#[test]
fn pgdecomp_logs_in_to_a_tls_only_server_with_verify_full() {
    let topo = Topology::start(Kind::MainOnly);
    let dir = cert_dir(&topo);
    require_tls_on_server(&topo, topo.main_primary(), &dir);
    let server_tls = |mode: &str, ca: &str| {
        format!(
            "server_tls_mode = \"{mode}\"\nserver_tls_ca_file = \"{}\"",
            dir.join(ca).display()
        )
    };
    let config = || common::proxy::ProxyConfig::new(&topo).build();
    let proxy = Proxy::start(&with_top_level(
        config(),
        &server_tls("verify-full", "one-ca.crt"),
    ));
    let out = psql(
        &proxy,
        "sslmode=disable",
        "select ssl from pg_stat_ssl where pid = pg_backend_pid()",
    );
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        proxy.log()
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "t",
        "the server connection is TLS"
    );

    // A CA that did not sign the server's certificate: no connection, and no plaintext fallback.
    let wrong = Proxy::start(&with_top_level(
        config(),
        &server_tls("verify-full", "two-ca.crt"),
    ));
    let out = psql(&wrong, "sslmode=disable", "select inet_server_port()");
    assert!(
        !out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        wrong.log()
    );
}
