//! Heartbeat flushes on PostgreSQL: a batch of beats in two statements, sessions then
//! participants, touching no indexed column (so the row updates stay HOT) and sending no
//! notification; instances' flushes take turns (an advisory lock).

use lapse_core::StoreError;
use lapse_core::store::{Beat, Moved};
use sqlx::PgPool;

use super::{FLUSH_LOCK, lock_until_commit};
use crate::backend;
use crate::rows;

/// Writes `beats` (the latest per participant); the sessions they moved, with their new
/// versions.
pub(super) async fn flush(pool: &PgPool, beats: &[Beat]) -> Result<Vec<Moved>, StoreError> {
    if beats.is_empty() {
        return Ok(Vec::new());
    }
    let latest = rows::latest_beats(beats);
    let sessions: Vec<&str> = latest.iter().map(|b| b.0).collect();
    let users: Vec<&str> = latest.iter().map(|b| b.1).collect();
    let ats: Vec<i64> = latest.iter().map(|b| b.2).collect();
    // Instances beating the same rooms flush the same rows each second. A statement
    // cannot choose the order it locks its sessions in, so two flushes at once (or a flush
    // and a sweep's batch) could each wait on the other until PostgreSQL's deadlock check
    // (a second) untangled them; taking turns, one waits only for the other's statements.
    let mut tx = pool.begin().await.map_err(backend)?;
    lock_until_commit(&mut tx, FLUSH_LOCK).await?;
    // Sessions, then participants; no NOTIFY, no index.
    let moved: Vec<(String, i64)> = sqlx::query_as(FLUSH_SESSIONS)
        .bind(&sessions)
        .bind(&users)
        .bind(&ats)
        .fetch_all(&mut *tx)
        .await
        .map_err(backend)?;
    sqlx::query(FLUSH_PARTICIPANTS)
        .bind(&sessions)
        .bind(&users)
        .bind(&ats)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
    tx.commit().await.map_err(backend)?;
    rows::moved(moved)
}

/// One heartbeat flush (one beat per participant), first statement: the sessions of the joined
/// participants beating take their latest beat as activity and a new version (so a sweep
/// decided on the older row loses its compare-and-set). Sessions before participants, the
/// order every commit takes them in: a flush that held a participant while it waited for its
/// session could deadlock with a commit holding the session and writing that participant
/// (ending a room whose people beat).
pub(super) const FLUSH_SESSIONS: &str = "update sessions set last_activity_at = greatest(last_activity_at, m.at), \
                 used = true, version = version + 1 \
             from (select b.s, max(b.at) as at \
                   from unnest($1::text[], $2::text[], $3::bigint[]) as b(s, u, at) \
                   join participants p on p.session_id = b.s and p.user_id = b.u \
                   and p.state = 'joined' group by b.s) m \
             where sessions.id = m.s and sessions.status in ('pending', 'active') \
             returning sessions.id, sessions.version";

/// Second statement: the joined participants beating move to their latest beat. Their open
/// sessions are held by this transaction already, so no commit is halfway through them.
pub(super) const FLUSH_PARTICIPANTS: &str = "update participants set beat_at = b.at, \
                 last_seen_at = greatest(participants.last_seen_at, b.at) \
             from unnest($1::text[], $2::text[], $3::bigint[]) as b(s, u, at) \
             where participants.session_id = b.s and participants.user_id = b.u \
             and participants.state = 'joined'";
