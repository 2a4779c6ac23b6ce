//! The schema: versioned migrations embedded in the binary, applied under a
//! PostgreSQL advisory lock so that replicas starting together migrate
//! once, and the check that refuses a schema newer than this binary knows.

use tokio_postgres::Client;

use super::super::StoreError;
use super::unavailable;

/// The migrations, in order: version, SQL. Add new ones at the end; never
/// change one that has shipped.
const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("migrations/0001_initial.sql")),
    (2, include_str!("migrations/0002_supervisor_scope.sql")),
    (3, include_str!("migrations/0003_audit_retention.sql")),
    (4, include_str!("migrations/0004_request_expiry.sql")),
];

/// The newest schema version this binary knows.
pub(super) const LATEST: i32 = 4;

/// Held (session-level) while migrating.
const MIGRATE_LOCK: i64 = 0x656e_7469_746c_6564; // "entitled"

/// Brings the database's schema to `LATEST`, or refuses one newer than it.
/// Returns the versions applied now (none when it was up to date).
pub(super) async fn migrate(client: &mut Client, database: &str) -> Result<Vec<i32>, StoreError> {
    let fail = |e: tokio_postgres::Error| unavailable(database, &e);
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATE_LOCK])
        .await
        .map_err(fail)?;
    let result = migrate_locked(client, database).await;
    // Released on every path; a dropped connection releases it too.
    let unlocked = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATE_LOCK])
        .await
        .map_err(fail);
    let applied = result?;
    unlocked?;
    Ok(applied)
}

async fn migrate_locked(client: &mut Client, database: &str) -> Result<Vec<i32>, StoreError> {
    let fail = |e: tokio_postgres::Error| unavailable(database, &e);
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS entitled_schema (
                version integer PRIMARY KEY,
                applied_at timestamptz NOT NULL DEFAULT now()
            )",
        )
        .await
        .map_err(fail)?;
    let found: i32 = client
        .query_one("SELECT coalesce(max(version), 0) FROM entitled_schema", &[])
        .await
        .map_err(fail)?
        .get(0);
    if found > LATEST {
        return Err(StoreError::SchemaTooNew {
            database: database.to_owned(),
            found,
            known: LATEST,
        });
    }
    let mut applied = Vec::new();
    for &(version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > found) {
        let tx = client.transaction().await.map_err(fail)?;
        tx.batch_execute(sql).await.map_err(fail)?;
        tx.execute(
            "INSERT INTO entitled_schema (version) VALUES ($1)",
            &[&version],
        )
        .await
        .map_err(fail)?;
        tx.commit().await.map_err(fail)?;
        tracing::info!(database, version, "schema migrated");
        applied.push(version);
    }
    Ok(applied)
}
