//! Who is calling, and what they may do with a session (SPEC §5). The engine checks this on
//! every operation, so no front-end can forget it.

use lapse_core::lifecycle::By;
use lapse_core::{Session, UserId};

use crate::EngineError;

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// An admin key (or development mode): everything.
    Admin {
        /// The key's name.
        name: String,
        /// The user named by `X-Actor`, for attribution only: an admin's rights stay.
        actor: Option<UserId>,
    },
    /// An app backend; with `X-Actor`, every host/self rule applies to that user.
    Service {
        /// The key's name.
        name: String,
        /// The user it acts for.
        actor: Option<UserId>,
    },
    /// A cron job: sweep, stats and health.
    Cron {
        /// The key's name (or `cron-secret`).
        name: String,
    },
    /// A signed-in user, only as themselves.
    User(UserId),
}

impl Caller {
    /// The user whose rights apply, if any.
    pub fn user(&self) -> Option<&UserId> {
        match self {
            Caller::User(u) => Some(u),
            Caller::Service { actor, .. } | Caller::Admin { actor, .. } => actor.as_ref(),
            _ => None,
        }
    }

    /// The credential's name (`user` for a user token).
    pub fn key_name(&self) -> &str {
        match self {
            Caller::Admin { name, .. } | Caller::Service { name, .. } | Caller::Cron { name } => {
                name
            }
            Caller::User(_) => "user",
        }
    }

    /// Admin, or a service acting as the system: host/self rules do not apply.
    pub fn is_system(&self) -> bool {
        matches!(
            self,
            Caller::Admin { .. } | Caller::Service { actor: None, .. }
        )
    }

    /// Whether this is an admin.
    pub fn is_admin(&self) -> bool {
        matches!(self, Caller::Admin { .. })
    }

    /// How events record this caller.
    pub fn by(&self) -> By {
        match self.user() {
            Some(u) => By::user(u),
            None => By::system(),
        }
    }

    /// Sessions are for admins, services and users; cron keys only sweep.
    pub fn require_sessions(&self) -> Result<(), EngineError> {
        match self {
            Caller::Cron { .. } => Err(EngineError::Forbidden(
                "a cron credential may only sweep and read stats and health".into(),
            )),
            _ => Ok(()),
        }
    }

    /// Admin or a service: operator views such as the global event log.
    pub fn require_backend(&self) -> Result<(), EngineError> {
        match self {
            Caller::Admin { .. } | Caller::Service { .. } => Ok(()),
            _ => Err(EngineError::Forbidden(
                "this needs an admin or service key".into(),
            )),
        }
    }

    /// Only admins.
    pub fn require_admin(&self) -> Result<(), EngineError> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(EngineError::Forbidden("this needs an admin key".into()))
        }
    }

    /// Sweeping: admin, service or cron.
    pub fn require_sweep(&self) -> Result<(), EngineError> {
        match self {
            Caller::User(_) => Err(EngineError::Forbidden(
                "sweeping needs an admin, service or cron credential".into(),
            )),
            _ => Ok(()),
        }
    }

    /// The caller must be the session's host (or the system).
    pub fn require_host(&self, s: &Session) -> Result<(), EngineError> {
        self.require_sessions()?;
        match self.user() {
            _ if self.is_system() => Ok(()),
            Some(u) if u == &s.host => Ok(()),
            _ => Err(EngineError::NotHost(format!(
                "only the host of `{}` may do this",
                s.id
            ))),
        }
    }

    /// The caller must be `user` (or the system).
    pub fn require_self(&self, user: &UserId) -> Result<(), EngineError> {
        self.require_sessions()?;
        match self.user() {
            _ if self.is_system() => Ok(()),
            Some(u) if u == user => Ok(()),
            _ => Err(EngineError::NotSelf(format!(
                "you may only do this as yourself, not as `{user}`"
            ))),
        }
    }

    /// The caller may see the session: the system, its host, or anyone who ever joined.
    pub fn require_read(&self, s: &Session) -> Result<(), EngineError> {
        self.require_sessions()?;
        match self.user() {
            _ if self.is_system() => Ok(()),
            Some(u) if u == &s.host || s.participant(u).is_some() => Ok(()),
            _ => Err(EngineError::Forbidden(format!(
                "you are not a participant of `{}`",
                s.id
            ))),
        }
    }
}
