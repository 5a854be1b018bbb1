//! The write-model database: SQLite (default) or MySQL/MariaDB, migrations, write transactions.

use std::path::Path;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{Any, AnyPool, ConnectOptions, Connection, Executor, Transaction};

use crate::config::Settings;

/// Errors opening or migrating a database.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The URL or a name is unusable.
    #[error("database configuration: {0}")]
    Config(String),
    /// Connecting or creating the database failed.
    #[error("database connect ({target}): {source}")]
    Connect {
        /// Where we tried to connect (credentials removed).
        target: String,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// A migration statement failed.
    #[error("migration {version} of {service}: {source}")]
    Migrate {
        /// The service whose schema failed.
        service: String,
        /// The migration version.
        version: i64,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
}

/// Which SQL dialect the pool speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// Embedded SQLite (WAL, `BEGIN IMMEDIATE` for writes).
    Sqlite,
    /// MySQL or MariaDB (InnoDB).
    MySql,
}

/// Cuts a string to at most `max` characters (for bounded VARCHAR columns).
///
/// Columns are VARCHAR, never TEXT: through sqlx's `Any` driver MySQL reports TEXT as BLOB,
/// which does not decode as a string.
pub fn clip(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// One schema step; `{ID}` in the SQL becomes the dialect's auto-increment primary key.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Increasing version number.
    pub version: i64,
    /// Statements separated by `;`.
    pub sql: &'static str,
}

/// The outbox table every event-producing service has (same transaction as its state).
pub const OUTBOX_DDL: &str = "CREATE TABLE IF NOT EXISTS outbox (
    id {ID},
    event_type VARCHAR(64) NOT NULL,
    aggregate_id VARCHAR(128) NOT NULL,
    payload VARCHAR(4000) NOT NULL,
    created_at BIGINT NOT NULL,
    published_at BIGINT NULL
);
CREATE INDEX IF NOT EXISTS outbox_unpublished ON outbox (published_at, id)";

/// Event ids a consumer has already applied (idempotent consumption).
pub const PROCESSED_DDL: &str = "CREATE TABLE IF NOT EXISTS processed_events (
    consumer VARCHAR(64) NOT NULL,
    event_id VARCHAR(190) NOT NULL,
    processed_at BIGINT NOT NULL,
    PRIMARY KEY (consumer, event_id)
)";

/// A connection pool to one service's database.
#[derive(Debug, Clone)]
pub struct Db {
    /// The pool.
    pub pool: AnyPool,
    /// Its dialect.
    pub dialect: Dialect,
    /// Its configured maximum size.
    pub max_connections: u32,
}

/// Whether an error is worth retrying (busy database, deadlock, pool exhausted, I/O).
pub fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => true,
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.to_string()).unwrap_or_default();
            let msg = db.message();
            matches!(code.as_str(), "5" | "6" | "261" | "517" | "40001")
                || msg.contains("database is locked")
                || msg.contains("Deadlock found")
                || msg.contains("Lock wait timeout")
        }
        _ => false,
    }
}

/// Whether an error is a unique-key violation (a concurrent insert of the same key won).
pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            matches!(db.kind(), sqlx::error::ErrorKind::UniqueViolation)
                || db.message().contains("Duplicate entry")
                || db.message().contains("UNIQUE constraint failed")
        }
        _ => false,
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

impl Db {
    /// Opens (creating if missing) the database of `service` and runs its migrations.
    pub async fn open(
        settings: &Settings,
        service: &str,
        migrations: &[Migration],
    ) -> Result<Db, DbError> {
        sqlx::any::install_default_drivers();
        let name = format!("{}_{}", settings.db_prefix, service);
        if !valid_name(&name) {
            return Err(DbError::Config(format!("invalid database name {name:?}")));
        }
        let max = settings.db_max_connections.max(1);
        let db = match &settings.database_url {
            None => Self::open_sqlite(&settings.data_dir, &name, max).await?,
            Some(url) => Self::open_mysql(url, &name, max).await?,
        };
        db.migrate(service, migrations).await?;
        tracing::info!(service, database = %name, dialect = ?db.dialect, "database ready");
        Ok(db)
    }

    async fn open_sqlite(dir: &Path, name: &str, max: u32) -> Result<Db, DbError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| DbError::Config(format!("cannot create data dir {dir:?}: {e}")))?;
        let path = dir.join(format!("{name}.db"));
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let target = path.display().to_string();
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(|conn, _meta| {
                Box::pin(async move {
                    conn.execute("PRAGMA busy_timeout = 10000").await?;
                    conn.execute("PRAGMA synchronous = NORMAL").await?;
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .map_err(|source| DbError::Connect {
                target: target.clone(),
                source,
            })?;
        // WAL is a property of the file: set once, readers never block the writer.
        sqlx::query("PRAGMA journal_mode = WAL")
            .execute(&pool)
            .await
            .map_err(|source| DbError::Connect { target, source })?;
        Ok(Db {
            pool,
            dialect: Dialect::Sqlite,
            max_connections: max,
        })
    }

    async fn open_mysql(url: &str, name: &str, max: u32) -> Result<Db, DbError> {
        let mut server = reqwest::Url::parse(url)
            .map_err(|e| DbError::Config(format!("invalid database url: {e}")))?;
        if server.scheme() != "mysql" && server.scheme() != "mariadb" {
            return Err(DbError::Config(format!(
                "database url scheme {:?} is not mysql (leave the url unset for SQLite)",
                server.scheme()
            )));
        }
        if server.scheme() == "mariadb" {
            let rest = server.as_str().trim_start_matches("mariadb").to_string();
            server = reqwest::Url::parse(&format!("mysql{rest}"))
                .map_err(|e| DbError::Config(format!("invalid database url: {e}")))?;
        }
        let target = format!(
            "{}:{}/{}",
            server.host_str().unwrap_or("?"),
            server.port().unwrap_or(3306),
            name
        );
        server.set_path("/");
        let opts = AnyConnectOptions::from_url(&server).map_err(|source| DbError::Connect {
            target: target.clone(),
            source,
        })?;
        let mut conn = tokio::time::timeout(Duration::from_secs(10), opts.connect())
            .await
            .map_err(|_| DbError::Config(format!("connecting to {target} timed out")))?
            .map_err(|source| DbError::Connect {
                target: target.clone(),
                source,
            })?;
        conn.execute(format!("CREATE DATABASE IF NOT EXISTS `{name}`").as_str())
            .await
            .map_err(|source| DbError::Connect {
                target: target.clone(),
                source,
            })?;
        let _ = conn.close().await;
        let mut db_url = server.clone();
        db_url.set_path(&format!("/{name}"));
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(Duration::from_secs(10))
            .connect(db_url.as_str())
            .await
            .map_err(|source| DbError::Connect {
                target: target.clone(),
                source,
            })?;
        Ok(Db {
            pool,
            dialect: Dialect::MySql,
            max_connections: max,
        })
    }

    async fn migrate(&self, service: &str, migrations: &[Migration]) -> Result<(), DbError> {
        let err = |version: i64| {
            let service = service.to_string();
            move |source| DbError::Migrate {
                service: service.clone(),
                version,
                source,
            }
        };
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
        )
        .execute(&self.pool)
        .await
        .map_err(err(0))?;
        for m in migrations {
            let done: Option<(i64,)> =
                sqlx::query_as("SELECT version FROM schema_migrations WHERE version = ?")
                    .bind(m.version)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(err(m.version))?;
            if done.is_some() {
                continue;
            }
            let id = match self.dialect {
                Dialect::Sqlite => "INTEGER PRIMARY KEY AUTOINCREMENT",
                Dialect::MySql => "BIGINT AUTO_INCREMENT PRIMARY KEY",
            };
            for stmt in m.sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                let stmt = stmt.replace("{ID}", id);
                sqlx::query(&stmt)
                    .execute(&self.pool)
                    .await
                    .map_err(err(m.version))?;
            }
            sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)")
                .bind(m.version)
                .bind(crate::now_ms())
                .execute(&self.pool)
                .await
                .map_err(err(m.version))?;
        }
        Ok(())
    }

    /// Begins a write transaction: `BEGIN IMMEDIATE` on SQLite so the write lock is taken
    /// up front (a deferred transaction that upgrades later fails with SQLITE_BUSY).
    pub async fn begin_write(&self) -> Result<Transaction<'static, Any>, sqlx::Error> {
        let r = match self.dialect {
            Dialect::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Dialect::MySql => self.pool.begin().await,
        };
        if let Err(sqlx::Error::InvalidSavePointStatement) = &r {
            // A pooled connection was left inside a transaction by a cancelled future.
            // Handlers run to completion (see server::run_to_completion) so this should not
            // happen; say it loudly if it does.
            tracing::error!("a pooled database connection is stuck inside a transaction");
        }
        r
    }

    /// `INSERT OR IGNORE` / `INSERT IGNORE`.
    pub fn insert_ignore(&self) -> &'static str {
        match self.dialect {
            Dialect::Sqlite => "INSERT OR IGNORE",
            Dialect::MySql => "INSERT IGNORE",
        }
    }

    /// Pool connections as (in use, idle, max).
    pub fn pool_state(&self) -> (u32, u32, u32) {
        let size = self.pool.size();
        let idle = self.pool.num_idle() as u32;
        (size.saturating_sub(idle), idle, self.max_connections)
    }

    /// Checks the database answers (for `/health`).
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
    }
}
