//! The rules in force, and changing them safely (SPEC §10).
//!
//! Each instance holds one [`Policy`]: the configuration it decides by and the version of the
//! rules in the database it was decided under. Every commit names that version, and the store
//! refuses it when other rules came into force since (another instance reloaded): the
//! instance then reads the rules in force from the database and decides again. So an instance
//! that has not heard of a reload yet cannot apply a rule the reload removed or lengthened,
//! nor store a deadline worked out under the old rules.
//!
//! A start with rules other than those in force, and a reload, put the new rules in force the
//! same way: preview (which sessions fire at once), publish (version + 1, with a
//! `config.reloaded` event, in one transaction that waits for commits decided under the old
//! version), swap, and then store every touched session's deadline anew.
//!
//! Here: the policy held, following and putting rules in force, reload. `touched`: the
//! sessions a change touches, a page at a time, judged for a preview and re-armed.

mod touched;

use std::collections::HashMap;
use std::sync::Arc;

use lapse_core::config::Config;
use lapse_core::event::{EventData, EventType, NewEvent};
use lapse_core::policy::{self, Preview};
use lapse_core::store::EventRecord;
use lapse_core::{Kind, SessionId, StoreError, Timestamp};
use serde::Serialize;

use crate::{Caller, Engine, EngineError};

/// Sessions read per page while judging or re-arming a kind.
const PAGE: u32 = 500;
/// How often one statement storing deadlines under new rules is tried.
const REARM_TRIES: usize = 5;
/// The session id `config.reloaded` events are filed under: reserved, no session has it.
pub const CONFIG_EVENTS: &str = "lapse:config";

/// The rules an instance decides by.
pub struct Policy {
    /// The version in the database they were decided under (0: none put in force yet, and
    /// commits are not checked).
    pub version: i64,
    /// The whole configuration, its kinds as in force.
    pub config: Arc<Config>,
    kinds: HashMap<String, Arc<Kind>>,
    /// The policy of a session whose kind the rules no longer have: no rules.
    unconfigured: Arc<Kind>,
}

/// The kinds `config` gives a host limit (`max_open_per_host`).
fn host_limited(config: &Config) -> Vec<String> {
    let mut kinds: Vec<String> = config
        .kinds
        .values()
        .filter(|k| k.max_open_per_host.is_some())
        .map(|k| k.name.clone())
        .collect();
    kinds.sort();
    kinds
}

impl Policy {
    /// `config`'s rules as the engine runs them (idle rules wait out the heartbeat grace), at
    /// `version`.
    pub fn new(config: &Config, version: i64) -> Policy {
        let config = engine_kinds(config);
        let kinds = config
            .kinds
            .iter()
            .map(|(name, k)| (name.clone(), Arc::new(k.clone())))
            .collect();
        Policy {
            version,
            config: Arc::new(config),
            kinds,
            unconfigured: Arc::new(Kind::ruleless("")),
        }
    }

    /// The kind called `name`, or no rules.
    pub fn kind(&self, name: &str) -> Arc<Kind> {
        self.kinds.get(name).unwrap_or(&self.unconfigured).clone()
    }
}

/// `config` with every idle rule's grace set (see [`crate::heartbeats::IDLE_GRACE`]).
fn engine_kinds(config: &Config) -> Config {
    let mut config = config.clone();
    for kind in config.kinds.values_mut() {
        kind.idle_grace = crate::heartbeats::IDLE_GRACE;
    }
    config
}

/// What putting other rules in force did.
#[derive(Clone, Debug, Serialize)]
pub struct Reloaded {
    /// Always true: a refused reload is an error.
    pub reloaded: bool,
    /// The version now in force.
    pub rules_version: i64,
    /// Per touched kind: rules added, removed and changed.
    pub diff: serde_json::Value,
    /// Sessions whose stored deadline was worked out anew.
    pub rearmed: u64,
    /// What the new rules fire at once (the sweeper applies it next).
    pub fire_now_total: u64,
}

/// Why a reload did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// More sessions would fire at once than `[rollout] max_immediate` allows.
    #[error(
        "{fire_now} sessions would fire at once, more than [rollout] max_immediate = {max}; \
         preview it, then reload with force=true to apply anyway"
    )]
    RolloutRefused {
        /// How many.
        fire_now: u64,
        /// The limit.
        max: u64,
        /// The whole preview.
        preview: Box<Preview>,
    },
    /// The engine refused (rights, the database).
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl Engine {
    /// The rules this instance decides by now.
    pub fn policy(&self) -> Arc<Policy> {
        self.policy
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The version of the rules in force this instance decides under (`None` before any are
    /// put in force: nothing is checked); read before the kinds a decision uses, so a commit
    /// never names a newer version than its decision had.
    pub(crate) fn rules_version(&self) -> Option<i64> {
        let version = self.policy().version;
        (version > 0).then_some(version)
    }

    fn swap_policy(&self, policy: Policy) {
        tracing::info!(rules_version = policy.version, "rules in force");
        *self.policy.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(policy);
    }

    /// Takes up the rules in force in the database if another instance put newer ones there.
    /// Called when a commit is refused for naming an older version, and when told of a
    /// reload.
    pub async fn follow_rules_in_force(&self) -> Result<(), EngineError> {
        let Some(stored) = self.store.rules_in_force().await? else {
            return Ok(());
        };
        let mine = self.policy();
        if stored.version <= mine.version {
            return Ok(());
        }
        let rules = Config::parse(&stored.kinds, "rules in force (database)").map_err(|e| {
            EngineError::Store(StoreError::Backend(format!(
                "the rules in force cannot be read by this lapse: {e}"
            )))
        })?;
        let config = mine.config.with_kinds_of(&rules);
        self.swap_policy(Policy::new(&config, stored.version));
        // A deadline stored under the new rules may be before this instance's plan.
        self.deadline_moved(Timestamp::from_millis(i64::MIN));
        Ok(())
    }

    /// At start: puts this instance's rules in force if the database holds none or others
    /// (a deploy with a changed file), else takes up the version in force. Returns what
    /// changed, if anything did.
    pub async fn put_rules_in_force(&self) -> Result<Option<Reloaded>, EngineError> {
        let file = self.config();
        // Instances starting together race for the first version; the losers look again.
        for _ in 0..5 {
            match self.put_file_in_force(&file).await {
                Err(EngineError::Store(StoreError::PolicyChanged)) => continue,
                done => return done,
            }
        }
        Err(EngineError::Conflict(
            "the rules in force kept changing while this instance started".into(),
        ))
    }

    async fn put_file_in_force(&self, file: &Config) -> Result<Option<Reloaded>, EngineError> {
        let mine = Policy::new(file, 0);
        match self.store.rules_in_force().await? {
            Some(stored) if stored.kinds == mine.config.kinds_toml => {
                self.swap_policy(Policy::new(&mine.config, stored.version));
                if !stored.rearmed {
                    // The instance that put them in force stopped before it had stored
                    // every deadline under them: finish the work, for every kind.
                    let rearmed = self.rearm_all(&self.policy(), stored.version).await?;
                    tracing::info!(
                        rules_version = stored.version,
                        rearmed,
                        "stored deadlines worked out under the rules in force (a reload was interrupted)"
                    );
                }
                Ok(None)
            }
            None => {
                // The first rules: the deadlines stored so far were worked out under them.
                let version = self
                    .store
                    .publish_rules(
                        0,
                        &mine.config.kinds_toml,
                        &host_limited(&mine.config),
                        self.now(),
                        None,
                    )
                    .await?;
                self.store.mark_rearmed(version).await?;
                self.swap_policy(Policy::new(&mine.config, version));
                Ok(None)
            }
            Some(stored) => {
                // As if this instance had run the stored rules and reloaded its own.
                let before = match Config::parse(&stored.kinds, "rules in force (database)") {
                    Ok(rules) => mine.config.with_kinds_of(&rules),
                    Err(e) => {
                        tracing::warn!(error = %e, "the rules in force cannot be read; replacing them");
                        (*mine.config).clone()
                    }
                };
                self.swap_policy(Policy::new(&before, stored.version));
                let done = self.put_in_force(file, true).await.map_err(|e| match e {
                    ReloadError::Engine(e) => e,
                    other => EngineError::Conflict(other.to_string()),
                })?;
                tracing::info!(
                    rules_version = done.rules_version,
                    fire_now = done.fire_now_total,
                    rearmed = done.rearmed,
                    "started with rules other than those in force: they are in force now"
                );
                if let Some(max) = file.rollout.max_immediate
                    && done.fire_now_total > max
                {
                    tracing::warn!(
                        fire_now = done.fire_now_total,
                        max_immediate = max,
                        "a start does not refuse rules as a reload would: more sessions fire at once than [rollout] max_immediate"
                    );
                }
                Ok(Some(done))
            }
        }
    }
    /// `POST /v1/admin/config/reload`: puts `file`'s kinds in force, unless more than its
    /// `[rollout] max_immediate` sessions would fire at once and `force` is not given.
    pub async fn reload(
        &self,
        caller: &Caller,
        file: &Config,
        force: bool,
    ) -> Result<Reloaded, ReloadError> {
        caller.require_admin()?;
        match self.put_in_force(file, force).await {
            Err(ReloadError::Engine(EngineError::Store(StoreError::PolicyChanged))) => {
                Err(EngineError::Conflict(
                    "other rules came into force meanwhile (another instance reloaded); \
                     preview again"
                        .into(),
                )
                .into())
            }
            done => done,
        }
    }

    async fn put_in_force(&self, file: &Config, force: bool) -> Result<Reloaded, ReloadError> {
        // One reload at a time here; instances racing are told apart by the version.
        let _one = self.reloading.lock().await;
        self.follow_rules_in_force().await?;
        let current = self.policy();
        let now = self.now();
        let config = current.config.with_kinds_of(file);
        let config = Config {
            rollout: file.rollout.clone(),
            ..config
        };
        let new = Policy::new(&config, current.version);
        let touched = policy::touched(&current.config.kinds, &new.config.kinds);
        let preview = self.judge(&touched, now).await?;
        if let Some(max) = file.rollout.max_immediate
            && preview.fire_now_total > max
            && !force
        {
            return Err(ReloadError::RolloutRefused {
                fire_now: preview.fire_now_total,
                max,
                preview: Box::new(preview),
            });
        }
        let diff = policy::diff(&touched);
        let event = self.reload_event(now, current.version, &diff, preview.fire_now_total);
        // Whether the deadlines stored so far follow the rules in force; if a reload was
        // interrupted, every kind's are worked out again, not only the touched ones.
        let behind = self
            .store
            .rules_in_force()
            .await
            .map_err(EngineError::from)?
            .is_some_and(|stored| !stored.rearmed);
        let version = match self
            .store
            .publish_rules(
                current.version,
                &config.kinds_toml,
                &host_limited(&config),
                now,
                Some(event),
            )
            .await
        {
            Ok(v) => v,
            Err(StoreError::PolicyChanged) => {
                self.follow_rules_in_force().await?;
                return Err(EngineError::Store(StoreError::PolicyChanged).into());
            }
            Err(e) => return Err(EngineError::from(e).into()),
        };
        self.swap_policy(Policy::new(&config, version));
        self.events_appended();
        let rearmed = if behind {
            self.rearm_all(&self.policy(), version).await?
        } else {
            self.rearm_touched(&touched, version).await?
        };
        Ok(Reloaded {
            reloaded: true,
            rules_version: version,
            diff,
            rearmed,
            fire_now_total: preview.fire_now_total,
        })
    }
    fn reload_event(
        &self,
        now: Timestamp,
        from: i64,
        diff: &serde_json::Value,
        fire_now: u64,
    ) -> EventRecord {
        let event = NewEvent {
            event_type: EventType::ConfigReloaded,
            at: now,
            // A constant that parses; the reserved id is refused at create.
            session_id: SessionId::parse(CONFIG_EVENTS).unwrap_or_else(|_| unreachable!()),
            kind: String::new(),
            actor: "system".into(),
            rule: None,
            data: EventData::of(&serde_json::json!({
                "from_version": from,
                "to_version": from + 1,
                "diff": diff,
                "fire_now_total": fire_now,
            })),
        };
        EventRecord {
            id: uuid::Uuid::now_v7().to_string(),
            applied_at: now,
            webhooks: self.webhooks.targets(&event),
            event,
        }
    }
}
