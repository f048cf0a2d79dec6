//! Heartbeat flushes on SQLite: a batch of beats written in one transaction of three
//! set-based statements (participants, their sessions, the versions they moved to), each
//! finding its rows by key. Beats of rooms not read first go through one more, which keeps
//! those whose rooms let them stand unread.

use lapse_core::StoreError;
use lapse_core::store::{Beat, BeatsWritten, Moved, beats_written};
use sqlx::Connection as _;
use sqlx::SqliteConnection;

use super::conns::Conns;
use crate::backend;
use crate::rows::{self, to_json};

/// Writes `beats` (the latest per participant); the sessions they moved, with their new
/// versions.
pub(super) async fn flush(writer: &Conns, beats: &[Beat]) -> Result<Vec<Moved>, StoreError> {
    Ok(write(writer, beats, &[]).await?.moved)
}

/// Writes `read` and those of `unread` whose rooms let them stand unread
/// ([`lapse_core::Store::write_heartbeats`]), in one transaction.
pub(super) async fn write(
    writer: &Conns,
    read: &[Beat],
    unread: &[Beat],
) -> Result<BeatsWritten, StoreError> {
    if read.is_empty() && unread.is_empty() {
        return Ok(BeatsWritten::default());
    }
    let mut writer = writer.get().await?;
    let mut tx = writer.begin().await.map_err(backend)?;
    // Checked by the writer that writes them, in its transaction: no other write comes
    // between the check and the beats.
    let taken = if unread.is_empty() {
        Vec::new()
    } else {
        let found: String = sqlx::query_scalar(UNREAD_TAKEN)
            .bind(to_json(&rows::beat_rows(unread)))
            .fetch_one(&mut *tx)
            .await
            .map_err(backend)?;
        let found: Vec<(i64, i64)> = serde_json::from_str(&found)
            .map_err(|e| StoreError::Backend(format!("unread beats unreadable: {e}")))?;
        rows::unread_taken(unread.len(), found)
    };
    let moved = flush_in(&mut tx, &beats_written(read, unread, &taken)).await?;
    tx.commit().await.map_err(backend)?;
    Ok(BeatsWritten {
        moved,
        unread: taken,
    })
}

/// The flush's three statements over `beats`, in the caller's transaction.
async fn flush_in(tx: &mut SqliteConnection, beats: &[Beat]) -> Result<Vec<Moved>, StoreError> {
    if beats.is_empty() {
        return Ok(Vec::new());
    }
    let batch = to_json(&rows::latest_beats(beats));
    // The participants, then their sessions, each once.
    sqlx::query(FLUSH_PARTICIPANTS)
        .bind(&batch)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
    sqlx::query(FLUSH_SESSIONS)
        .bind(&batch)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
    let moved: String = sqlx::query_scalar(FLUSH_MOVED)
        .bind(&batch)
        .fetch_one(&mut *tx)
        .await
        .map_err(backend)?;
    let moved: Vec<(String, i64)> = serde_json::from_str(&moved)
        .map_err(|e| StoreError::Backend(format!("flushed sessions unreadable: {e}")))?;
    rows::moved(moved)
}

/// Of beats of rooms not read first (`[session, user, at]` each, in order), those whose rooms
/// let them stand unread ([`lapse_core::Store::write_heartbeats`]), as one JSON array of
/// `[index, last_activity_at]`. Each room found by its key, its participant by theirs;
/// `+status` and `+next_due_at` keep the planner on the keys, as the batch drives.
pub(super) const UNREAD_TAKEN: &str = "select json_group_array(json_array(j.key, s.last_activity_at)) \
             from jsonb_each(?1) as j \
             join sessions s on s.id = j.value ->> 0 \
             join participants p on p.session_id = s.id and p.user_id = j.value ->> 1 \
             where +s.status in ('pending', 'active') and s.parent is null \
             and (+s.next_due_at is null or +s.next_due_at > j.value ->> 2) \
             and p.state = 'joined' \
             and exists (select 1 from rules_in_force r \
                         where r.id = 1 and r.rearmed_version = r.version)";

/// One heartbeat flush, first step: the joined participants beating move to their latest
/// beat (one per participant in the batch).
pub(super) const FLUSH_PARTICIPANTS: &str = "update participants set beat_at = b.at, \
             last_seen_at = max(last_seen_at, b.at) \
             from (select value ->> 0 as s, value ->> 1 as u, value ->> 2 as at \
                   from jsonb_each(?1)) as b \
             where participants.session_id = b.s and participants.user_id = b.u \
             and participants.state = 'joined'";

/// The sessions of a heartbeat flush, each with the latest beat its joined participants just
/// took (their `beat_at`):
/// activity moves forward and the version up (so a sweep that decided on the older row loses
/// its compare-and-set); the deadline column is left alone (lazy re-arm). `+status`: the batch
/// drives, each session found by its key (through the status index, the batch would be read
/// once per session).
pub(super) const FLUSH_SESSIONS: &str = "update sessions set last_activity_at = max(last_activity_at, b.at), \
             used = 1, version = version + 1 \
             from (select p.session_id as s, max(p.beat_at) as at \
                   from (select value ->> 0 as s, value ->> 1 as u from jsonb_each(?1)) as j \
                   join participants p on p.session_id = j.s and p.user_id = j.u \
                   where p.state = 'joined' group by 1) as b \
             where sessions.id = b.s and +sessions.status in ('pending', 'active')";

/// The sessions [`FLUSH_SESSIONS`] just moved (the same ones: open, with a joined participant
/// in the batch) and their new versions, as one JSON array of `[id, version]`: one row back
/// instead of one per session, each of which would cross from SQLite's thread to ours.
pub(super) const FLUSH_MOVED: &str = "select json_group_array(json_array(s.id, s.version)) from sessions s \
             where s.id in (select p.session_id \
                   from (select value ->> 0 as s, value ->> 1 as u from jsonb_each(?1)) as j \
                   join participants p on p.session_id = j.s and p.user_id = j.u \
                   where p.state = 'joined') \
             and +s.status in ('pending', 'active')";
