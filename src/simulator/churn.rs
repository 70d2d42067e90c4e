//! Simulated activity: applications that keep changing the way a busy Argo CD's do, for the
//! demo and `argocd-gateway simulator --change-every`.

use std::time::Duration;

use rand::Rng;
use tokio_util::sync::CancellationToken;

use super::SimHandle;

/// Applications the churn never touches, so a person (or the README's test) can sync and wait
/// on them without a simulated rollout getting in the way: `app-00001` (single source) and
/// `app-00003` (multi-source).
pub const LEFT_ALONE: [usize; 2] = [1, 3];

/// Keeps the simulated applications moving the way a busy Argo CD does: a new commit makes an
/// app OutOfSync, a sync runs, the rollout progresses and ends Healthy (now and then Degraded).
/// Runs until `stop`; the rollouts in progress end with it.
pub async fn churn(sim: SimHandle, apps: usize, every: Duration, stop: CancellationToken) {
    let ns = sim.options().namespace.clone();
    let candidates: Vec<usize> = (0..apps).filter(|i| !LEFT_ALONE.contains(i)).collect();
    if candidates.is_empty() || every.is_zero() {
        return;
    }
    let mut rollouts = tokio::task::JoinSet::new();
    loop {
        while rollouts.try_join_next().is_some() {}
        let (pause, i, roll) = {
            let mut rng = rand::rng();
            let jitter = rng.random_range(0.5..1.5);
            (
                every.mul_f64(jitter),
                candidates[rng.random_range(0..candidates.len())],
                rng.random_range(0..10u32),
            )
        };
        tokio::select! {
            _ = stop.cancelled() => {
                rollouts.abort_all();
                return;
            }
            _ = tokio::time::sleep(pause) => {}
        }
        let name = format!("app-{i:05}");
        let commit = format!("{:040x}", rand::rng().random::<u128>());
        sim.set_sync_status(&ns, &name, "OutOfSync");
        let step = every.mul_f64(0.4).min(Duration::from_secs(2));
        let sim = sim.clone();
        let ns = ns.clone();
        rollouts.spawn(async move {
            sim.set_operation_phase(&ns, &name, "Running");
            tokio::time::sleep(step).await;
            sim.set_revision(&ns, &name, &commit);
            sim.set_sync_status(&ns, &name, "Synced");
            sim.set_health(&ns, &name, "Progressing", "Waiting for rollout to finish");
            tokio::time::sleep(step).await;
            if roll == 0 {
                sim.set_operation_phase(&ns, &name, "Failed");
                sim.set_health(&ns, &name, "Degraded", "Deployment exceeded its progress deadline");
            } else {
                sim.set_operation_phase(&ns, &name, "Succeeded");
                sim.set_health(&ns, &name, "Healthy", "");
            }
        });
    }
}
