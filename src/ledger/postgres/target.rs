//! Where a PostgreSQL ledger is: its URL read as libpq reads it, the password from the URL,
//! `PGPASSWORD` or `~/.pgpass`, and the URL as shown everywhere, which never carries it.

use std::time::Duration;

/// Where a PostgreSQL ledger is: the connection settings (with the password, if any) and the
/// URL as shown everywhere, which never carries it.
#[derive(Clone)]
pub struct PgTarget {
    pub(super) config: tokio_postgres::Config,
    pub(super) shown: String,
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("PgTarget").field(&self.shown).finish()
    }
}

impl std::fmt::Display for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

/// Whether `text` names a PostgreSQL ledger rather than a SQLite file.
pub fn is_url(text: &str) -> bool {
    text.starts_with("postgres://") || text.starts_with("postgresql://")
}

impl PgTarget {
    /// Reads a `postgres://` URL (libpq's syntax, `sslmode` and all). Without a password in the
    /// URL, `env_password` (`PGPASSWORD`) serves, else the first matching line of `pgpass` (the
    /// content of `~/.pgpass` or `PGPASSFILE`), as libpq does.
    ///
    /// # Errors
    /// The URL is not one libpq would take; the message never repeats it (it may hold a password).
    pub fn parse(url: &str, env_password: Option<&str>, pgpass: Option<&str>) -> Result<PgTarget, String> {
        let mut config: tokio_postgres::Config =
            url.parse().map_err(|error| format!("not a PostgreSQL URL libpq would take ({error})"))?;
        if config.get_user().is_none_or(str::is_empty) {
            return Err("the URL names no user (postgres://USER@HOST/DATABASE)".to_owned());
        }
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
            #[cfg(unix)]
            Some(tokio_postgres::config::Host::Unix(path)) => path.display().to_string(),
            None => {
                config.host("localhost");
                "localhost".to_owned()
            }
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let user = config.get_user().unwrap_or_default().to_owned();
        let database = config.get_dbname().map_or_else(|| user.clone(), str::to_owned);
        if config.get_password().is_none() {
            let found = env_password
                .map(str::to_owned)
                .or_else(|| pgpass.and_then(|text| pgpass_lookup(text, &host, port, &database, &user)));
            if let Some(password) = found {
                config.password(password);
            }
        }
        config.application_name("workflow-metrics");
        config.connect_timeout(Duration::from_secs(10));
        let shown = format!("postgres://{user}@{host}:{port}/{database}");
        Ok(PgTarget { config, shown })
    }
}

/// The password of the first `~/.pgpass` line matching (host:port:database:user:password, `*`
/// for any, `\` escaping `:` and `\`).
fn pgpass_lookup(text: &str, host: &str, port: u16, database: &str, user: &str) -> Option<String> {
    let port = port.to_string();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let mut fields = Vec::with_capacity(5);
        let mut field = String::new();
        let mut chars = line.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => field.extend(chars.next()),
                ':' if fields.len() < 4 => fields.push(std::mem::take(&mut field)),
                c => field.push(c),
            }
        }
        fields.push(field);
        if fields.len() != 5 {
            continue;
        }
        let matches = |pattern: &str, value: &str| pattern == "*" || pattern == value;
        if matches(&fields[0], host)
            && matches(&fields[1], &port)
            && matches(&fields[2], database)
            && matches(&fields[3], user)
        {
            return fields.pop();
        }
    }
    None
}

#[cfg(test)]
pub(crate) mod testing {
    //! A real PostgreSQL server for the tests: `WORKFLOW_METRICS_TEST_POSTGRES` names one where
    //! the user may create databases (`scripts/test` starts a throwaway one); each test gets a
    //! database of its own.
    use super::*;

    /// The server's URL; its absence fails the test, loudly.
    #[allow(clippy::disallowed_methods, reason = "the tests find their server in the environment")]
    pub(crate) fn server_url() -> String {
        std::env::var("WORKFLOW_METRICS_TEST_POSTGRES").unwrap_or_else(|_| {
            panic!("the PostgreSQL ledger's tests need a server: run scripts/test (it starts one), or set WORKFLOW_METRICS_TEST_POSTGRES=postgres://USER:PASSWORD@HOST:PORT/DB")
        })
    }

    /// A new, empty database on the test server.
    pub(crate) async fn fresh_database() -> PgTarget {
        let url = server_url();
        let admin = PgTarget::parse(&url, None, None).expect("WORKFLOW_METRICS_TEST_POSTGRES is a PostgreSQL URL");
        let (client, connection) = admin.config.connect(tokio_postgres::NoTls).await.expect("the test server answers");
        tokio::spawn(async move { drop(connection.await) });
        let name = format!("wm_unit_{:016x}", fastrand::u64(..));
        client.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
        let mut config = admin.config.clone();
        config.dbname(&name);
        let shown = admin.shown.rsplit_once('/').map_or(admin.shown.clone(), |(base, _)| format!("{base}/{name}"));
        PgTarget { config, shown }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_never_show_the_password_and_pgpass_fills_it_in() {
        let target =
            PgTarget::parse("postgres://alice:s3cret@db.example:6543/metrics?sslmode=require", None, None).unwrap();
        assert_eq!(target.to_string(), "postgres://alice@db.example:6543/metrics");
        assert!(!format!("{target:?}").contains("s3cret"));
        assert_eq!(target.config.get_password(), Some(&b"s3cret"[..]));
        let pgpass = "# comment\nother:5432:*:alice:nope\ndb.example:6543:metrics:alice:from\\:pgpass\n";
        let target = PgTarget::parse("postgresql://alice@db.example:6543/metrics", None, Some(pgpass)).unwrap();
        assert_eq!(target.config.get_password(), Some(&b"from:pgpass"[..]));
        let target = PgTarget::parse("postgresql://alice@db.example:6543/metrics", Some("env"), Some(pgpass)).unwrap();
        assert_eq!(target.config.get_password(), Some(&b"env"[..]), "PGPASSWORD first, as libpq");
        let error = PgTarget::parse("postgres://:pw@/", None, None).unwrap_err();
        assert!(!error.contains("pw"), "{error}");
        assert!(is_url("postgresql://x@y/z") && !is_url("cache/metrics.db"));
    }
}
