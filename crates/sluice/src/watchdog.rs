//! Defines the idle watchdog: silence from a source turns into a reconnect.

use std::{sync::atomic::Ordering, time::Duration};

use crate::source::Liveness;

/// Resolves once the source has shown no sign of life for `timeout`.
///
/// Signs of life are emitted envelopes and [`crate::SourceContext::alive`] calls. A source that
/// waits because the pipeline is behind (backpressure) is not idle. With `timeout` `None` it never
/// resolves. Uses tokio time, so tests drive it with `tokio::time::pause`.
pub(crate) async fn idle(liveness: &Liveness, timeout: Option<Duration>) {
    let Some(timeout) = timeout else {
        return std::future::pending().await;
    };
    let tick = (timeout / 4).max(Duration::from_millis(1));
    let mut last = liveness.beats.load(Ordering::Relaxed);
    let mut silent = Duration::ZERO;
    loop {
        tokio::time::sleep(tick).await;
        let now = liveness.beats.load(Ordering::Relaxed);
        if now != last || liveness.blocked.load(Ordering::Relaxed) {
            last = now;
            silent = Duration::ZERO;
        } else {
            silent += tick;
            if silent >= timeout {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn silence_for_the_timeout_fires() {
        let liveness = Liveness::default();
        let started = tokio::time::Instant::now();
        idle(&liveness, Some(Duration::from_secs(4))).await;
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(4) && waited <= Duration::from_secs(5),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeats_keep_it_quiet_and_backpressure_is_not_silence() {
        let liveness = Arc::new(Liveness::default());
        let beating = liveness.clone();
        let beat = tokio::spawn(async move {
            for _ in 0..20 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                beating.beats.fetch_add(1, Ordering::Relaxed);
            }
            beating.blocked.store(true, Ordering::Relaxed);
        });
        let fired = tokio::time::timeout(
            Duration::from_secs(60),
            idle(&liveness, Some(Duration::from_secs(4))),
        )
        .await;
        assert!(
            fired.is_err(),
            "watchdog fired while the source was alive or blocked"
        );
        beat.await.unwrap();
    }
}
