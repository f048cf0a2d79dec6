//! Heartbeat flushes on PostgreSQL: a batch of beats in two statements, sessions then
//! participants, touching no indexed column (so the row updates stay HOT) and sending no
//! notification; instances' flushes take turns (an advisory lock). Beats of rooms not read
//! first go through one more statement first, which keeps those whose rooms let them stand
//! unread.

use lapse_core::StoreError;
use lapse_core::store::{Beat, BeatsWritten, Moved, beats_written};
use sqlx::{PgConnection, PgPool};

use super::{FLUSH_LOCK, lock_until_commit};
use crate::backend;
use crate::rows;

/// Writes `beats` (the latest per participant); the sessions they moved, with their new
/// versions.
pub(super) async fn flush(pool: &PgPool, beats: &[Beat]) -> Result<Vec<Moved>, StoreError> {
    Ok(write(pool, beats, &[]).await?.moved)
}

/// Writes `read` and those of `unread` whose rooms let them stand unread
/// ([`lapse_core::Store::write_heartbeats`]), in one transaction.
pub(super) async fn write(
    pool: &PgPool,
    read: &[Beat],
    unread: &[Beat],
) -> Result<BeatsWritten, StoreError> {
    if read.is_empty() && unread.is_empty() {
        return Ok(BeatsWritten::default());
    }
    // Instances beating the same rooms flush the same rows each second. A statement
    // cannot choose the order it locks its sessions in, so two flushes at once (or a flush
    // and a sweep's batch) could each wait on the other until PostgreSQL's deadlock check
    // (a second) untangled them; taking turns, one waits only for the other's statements.
    let mut tx = pool.begin().await.map_err(backend)?;
    lock_until_commit(&mut tx, FLUSH_LOCK).await?;
    // Checked as a read would have been, just before the write: a commit between the two
    // is as one between a read and its beat's write, and the flush's new version makes a
    // decision taken on the older row lose its compare-and-set.
    let taken = if unread.is_empty() {
        Vec::new()
    } else {
        let rows = rows::beat_rows(unread);
        let found: Vec<(i64, i64)> = sqlx::query_as(UNREAD_TAKEN)
            .bind(rows.iter().map(|b| b.0).collect::<Vec<_>>())
            .bind(rows.iter().map(|b| b.1).collect::<Vec<_>>())
            .bind(rows.iter().map(|b| b.2).collect::<Vec<_>>())
            .fetch_all(&mut *tx)
            .await
            .map_err(backend)?;
        rows::unread_taken(unread.len(), found)
    };
    let moved = flush_in(&mut tx, &beats_written(read, unread, &taken)).await?;
    tx.commit().await.map_err(backend)?;
    Ok(BeatsWritten {
        moved,
        unread: taken,
    })
}

/// The flush's two statements over `beats`, in the caller's transaction.
async fn flush_in(tx: &mut PgConnection, beats: &[Beat]) -> Result<Vec<Moved>, StoreError> {
    if beats.is_empty() {
        return Ok(Vec::new());
    }
    let latest = rows::latest_beats(beats);
    let sessions: Vec<&str> = latest.iter().map(|b| b.0).collect();
    let users: Vec<&str> = latest.iter().map(|b| b.1).collect();
    let ats: Vec<i64> = latest.iter().map(|b| b.2).collect();
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
    rows::moved(moved)
}

/// Of beats of rooms not read first (in order, as three arrays), those whose rooms let them
/// stand unread ([`lapse_core::Store::write_heartbeats`]), as `(index, last_activity_at)`:
/// each room found by its key, its participant by theirs.
pub(super) const UNREAD_TAKEN: &str = "select (b.i - 1)::bigint, s.last_activity_at \
             from unnest($1::text[], $2::text[], $3::bigint[]) with ordinality as b(s, u, at, i) \
             join sessions s on s.id = b.s \
             join participants p on p.session_id = b.s and p.user_id = b.u \
             where s.status in ('pending', 'active') and s.parent is null \
             and (s.next_due_at is null or s.next_due_at > b.at) \
             and p.state = 'joined' \
             and exists (select 1 from rules_in_force r \
                         where r.id = 1 and r.rearmed_version = r.version)";

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
