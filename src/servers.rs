//! The two servers, and which one is primary right now.
//!
//! [`Servers`] holds both sides' upstream clients and management-API
//! clients (one module per kind: [`connect2id`], [`authlete`]). The source is
//! primary until cutover, the target after; the forwarding path, the sync
//! workers and the admin API all read it here, so a flip is one atomic store
//! seen by everyone. The clients write with the import semantics that make a
//! record on the secondary identical to the primary's (same identifiers,
//! secrets and token material), never a replay of the request that minted
//! it; the Connect2id client also reads the primary (hence "servers", not
//! "target").

pub mod authlete;
pub mod connect2id;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use self::authlete::Authlete;
use self::connect2id::Connect2id;
use crate::model::Side;
use crate::upstream::PrimarySelector;
use crate::upstream::Upstream;

/// Both servers, and which one is primary.
#[derive(Debug)]
pub struct Servers {
    source: Arc<Upstream>,
    target: Arc<Upstream>,
    source_api: Connect2id,
    target_api: Connect2id,
    target_is_primary: AtomicBool,
    /// When the primary last flipped.
    flipped_at: std::sync::Mutex<Option<std::time::Instant>>,
    /// The Authlete service, when the target is one (the target upstream is
    /// then the new authorization server, and `target_api` is not used).
    authlete: Option<Arc<Authlete>>,
}

impl Servers {
    /// Both servers, with `primary` serving traffic.
    pub fn new(
        source: Arc<Upstream>,
        target: Arc<Upstream>,
        source_api: Connect2id,
        target_api: Connect2id,
        primary: Side,
    ) -> Self {
        Self {
            source,
            target,
            source_api,
            target_api,
            target_is_primary: AtomicBool::new(primary == Side::Target),
            flipped_at: std::sync::Mutex::new(None),
            authlete: None,
        }
    }

    /// Makes the target an Authlete service.
    pub fn with_authlete(mut self, authlete: Arc<Authlete>) -> Self {
        self.authlete = Some(authlete);
        self
    }

    /// The Authlete service, when the target is one.
    pub fn authlete(&self) -> Option<&Arc<Authlete>> {
        self.authlete.as_ref()
    }

    /// Whether changes flow to an Authlete service right now: only while
    /// the source is primary (nothing syncs back from Authlete).
    pub fn syncs_to_authlete(&self) -> bool {
        self.authlete.is_some() && self.primary_side() == Side::Source
    }

    /// The side serving traffic.
    pub fn primary_side(&self) -> Side {
        if self.target_is_primary.load(Ordering::Acquire) {
            Side::Target
        } else {
            Side::Source
        }
    }

    /// Makes `side` the primary.
    pub fn set_primary(&self, side: Side) {
        self.target_is_primary
            .store(side == Side::Target, Ordering::Release);
    }

    /// Records that the primary just flipped (see [`Servers::previous_within`]).
    pub fn mark_flip(&self) {
        if let Ok(mut at) = self.flipped_at.lock() {
            *at = Some(std::time::Instant::now());
        }
    }

    /// The previous primary, if the primary flipped less than `window` ago:
    /// state that lives only there (logins in progress, authorization codes,
    /// identifier access tokens) is still served from it.
    pub fn previous_within(&self, window: std::time::Duration) -> Option<Side> {
        let at = (*self.flipped_at.lock().ok()?)?;
        (at.elapsed() < window).then(|| self.primary_side().other())
    }

    /// The management APIs of a side.
    pub fn api(&self, side: Side) -> &Connect2id {
        match side {
            Side::Source => &self.source_api,
            Side::Target => &self.target_api,
        }
    }

    /// The primary's management APIs (read current state here).
    pub fn primary_api(&self) -> &Connect2id {
        self.api(self.primary_side())
    }

    /// The secondary's management APIs (write the state here).
    pub fn secondary_api(&self) -> &Connect2id {
        self.api(self.primary_side().other())
    }

    /// The upstream of a side.
    pub fn upstream(&self, side: Side) -> &Arc<Upstream> {
        match side {
            Side::Source => &self.source,
            Side::Target => &self.target,
        }
    }
}

impl PrimarySelector for Servers {
    fn primary(&self) -> Arc<Upstream> {
        Arc::clone(self.upstream(self.primary_side()))
    }
}
