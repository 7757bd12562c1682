//! The PostgreSQL server the tests share (`WORKFLOW_METRICS_TEST_POSTGRES`, started by
//! `scripts/test`): a fresh database per test, and the server's own controls (a restart).

/// The server's URL (with its password); its absence fails the test, loudly.
#[allow(clippy::disallowed_methods, reason = "the tests find their server in the environment")]
pub fn server_url() -> String {
    std::env::var("WORKFLOW_METRICS_TEST_POSTGRES").unwrap_or_else(|_| {
        panic!("the PostgreSQL tests need a server: run scripts/test (it starts one), or set WORKFLOW_METRICS_TEST_POSTGRES=postgres://USER:PASSWORD@HOST:PORT/DB")
    })
}

/// Runs statements on the test server's default database.
pub fn admin(sql: &str) {
    execute(&server_url(), sql);
}

/// Runs statements on the database at `url`.
pub fn execute(url: &str, sql: &str) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        // One test restarts the server: the others' statements wait for it to come back.
        let started = std::time::Instant::now();
        loop {
            let error = match tokio_postgres::connect(url, tokio_postgres::NoTls).await {
                Ok((client, connection)) => {
                    tokio::spawn(async move { drop(connection.await) });
                    match client.batch_execute(sql).await {
                        Ok(()) => return,
                        Err(error) if error.as_db_error().is_some() => panic!("{sql}: {error}"),
                        Err(error) => error,
                    }
                }
                Err(error) => error,
            };
            assert!(started.elapsed() < std::time::Duration::from_secs(30), "the test server does not answer: {error}");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    });
}

/// A new, empty database on the test server: its URL (with the password).
pub fn fresh_database() -> String {
    let name = format!("wm_it_{:016x}", fastrand::u64(..));
    admin(&format!("CREATE DATABASE {name}"));
    let url = server_url();
    let (base, _) = url.rsplit_once('/').expect("a URL with a database");
    format!("{base}/{name}")
}

/// The URL without its password (what the tool must show instead).
pub fn without_password(url: &str) -> (String, String) {
    let (scheme, rest) = url.split_once("://").unwrap();
    let (credentials, host) = rest.split_once('@').unwrap();
    let (user, password) = credentials.split_once(':').unwrap();
    (format!("{scheme}://{user}@{host}"), password.to_owned())
}

/// Restarts the server (`pg_ctl restart`, fast shutdown), as `scripts/test` says how.
#[allow(clippy::disallowed_methods, reason = "scripts/test says how to control the server")]
pub fn restart() {
    let control = std::env::var("WORKFLOW_METRICS_TEST_POSTGRES_CTL")
        .expect("WORKFLOW_METRICS_TEST_POSTGRES_CTL: how to control the test server (scripts/test sets it)");
    let mut words = control.split_whitespace();
    let program = words.next().unwrap();
    let status = std::process::Command::new(program)
        .args(words)
        .args(["-m", "fast", "-w", "restart"])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "pg_ctl restart failed");
}
