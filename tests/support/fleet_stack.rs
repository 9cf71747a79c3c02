//! In-process fleets: instances of the real proxy sharing one PostgreSQL
//! store in front of the same emulators, and flips that wait out the
//! pre-flight checks that settle by themselves.

use std::time::Duration;

use handover::api::{AdminClient, FlipReport, FlipRequest, Outcome};
use handover::config::Config;
use handover::emulator::connect2id::Strictness;
use handover::store;

use super::proxy::TestProxy;
use super::stack::{Servers, Stack};

/// Every instance renews its lease (and may be given up) this fast.
pub const LEASE: Duration = Duration::from_secs(2);

/// Pre-flight checks that settle by themselves a moment later: the sync
/// lag of a load running flat out on a shared machine, a session created
/// during the live-session pass and synced by another instance, a backfill
/// finished on another instance that has not renewed its lease since.
pub const SETTLING: &[&str] = &["sync lag", "live sessions alive", "backfill finished"];

/// Makes `config` an instance of the fleet whose store is at `url`.
pub fn fleet_config(config: &mut Config, url: &str) {
    config.store = store::Config {
        claim_lease: LEASE,
        ..store::Config::postgres(url)
    };
}

/// A stack whose proxy is the first instance of a fleet on the store at
/// `url`; both servers take the other's secret on a client update, as the
/// runbook asks (a rollback syncs client updates back to the source).
pub async fn fleet_stack(url: &str) -> Stack {
    let url = url.to_owned();
    Stack::start_servers(
        Servers {
            strictness: Some(Strictness {
                preferred_client_secret_on_update: true,
                ..Strictness::default()
            }),
            ..Servers::default()
        },
        move |config| fleet_config(config, &url),
    )
    .await
}

/// Another instance of the same fleet (its own journal directory, so its
/// own local files: nothing but the database is shared).
pub async fn another(stack: &Stack, store_url: &str) -> TestProxy {
    let mut config = stack.config.clone();
    fleet_config(&mut config, store_url);
    let mut proxy = TestProxy::start(config).await;
    proxy.wait_ready().await;
    proxy
}

/// Flips through `admin`, trying again (as an SRE would) while the only
/// failed checks are [`SETTLING`] ones.
pub async fn flip_settling(admin: &AdminClient, path: &str, request: &FlipRequest) -> FlipReport {
    let mut report = admin.flip(path, request).await.unwrap();
    for _ in 0..40 {
        let settling_only = report.outcome == Outcome::Refused
            && report
                .preflight
                .iter()
                .all(|check| check.ok || SETTLING.iter().any(|name| check.check.starts_with(name)));
        if !settling_only {
            break;
        }
        eprintln!(
            "refused, settling: {:?}",
            report
                .preflight
                .iter()
                .filter(|check| !check.ok)
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        report = admin.flip(path, request).await.unwrap();
    }
    report
}
