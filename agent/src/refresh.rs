//! The refresh engine: one cached token per source cache key, refreshed ahead
//! of expiry, fetched once however many requests want it.
//!
//! Policy (see docs/architecture.md, "Sources and refresh"):
//!
//! - **Serve while valid.** A cached token is handed out while the wall clock
//!   is before `expires_at − margin`, with margin = min(60 s, 10 % of the
//!   token's lifetime). Validity is checked against [`Clock::now`] on every
//!   get, not only by timers: timers sleep through a suspended laptop.
//! - **Refresh ahead.** At about half the lifetime (±10 % jitter) a
//!   background fetch replaces the token; gets in that window are answered
//!   from the cache and never wait. A get that notices a refresh is due (a
//!   timer that slept through suspend) starts it.
//! - **Single flight.** At most one fetch per slot is in flight; every get on
//!   a cold or expired slot waits for that one fetch.
//! - **Backoff.** A failure sets a "not before" time: exponential backoff
//!   with full jitter (base 1 s, cap 5 min), or the source's retry-after if
//!   that is later. Transient failures are retried in the background while
//!   the old token is still valid; permanent ones never are: the next try
//!   comes from a get that needs a token, and not before the backoff.
//! - **Never expired.** When no usable token is cached and fetching fails,
//!   the get fails with the reason ("the token for X expired at … and
//!   refreshing it failed: …").
//!
//! The engine knows nothing about particular sources: they come with each
//! get as an `Arc<dyn Source>`; a reloaded config hands in new ones through
//! [`Engine::reconcile`].

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use regent_shared::Secret;
use regent_shared::protocol::EntryInfo;
use regent_shared::registry::RegistryKey;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::clock::Clock;
use crate::sources::{Context, ErrorClass, Source, SourceError, SourceRequest, Token};

/// The numbers of the refresh policy.
#[derive(Clone, Debug)]
pub struct Policy {
    /// Refresh when this fraction of the lifetime has passed.
    pub refresh_fraction: f64,
    /// ± this fraction of the refresh point, at random.
    pub jitter: f64,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// The safety margin: min(`margin_cap`, `margin_fraction` × lifetime).
    pub margin_cap: Duration,
    pub margin_fraction: f64,
    /// A fetch that takes longer than this fails, whatever the source does.
    pub fetch_timeout: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            refresh_fraction: 0.5,
            jitter: 0.1,
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(300),
            margin_cap: Duration::from_secs(60),
            margin_fraction: 0.1,
            fetch_timeout: Duration::from_secs(15 * 60),
        }
    }
}

/// Why [`Engine::get`] has no token to hand out: one line for the user
/// (which registry, since when, why), and what the last failure said of
/// itself.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{message}")]
pub struct Unavailable {
    message: String,
    /// The last fetch's failure class; `None` when no fetch failed yet.
    pub class: Option<ErrorClass>,
    /// How long until the next fetch may be tried (backoff, or the
    /// source's retry-after).
    pub retry_in: Option<Duration>,
}

type Random = Box<dyn Fn() -> f64 + Send + Sync>;

pub struct Engine {
    clock: Arc<dyn Clock>,
    policy: Policy,
    ctx: Context,
    /// A number in [0, 1), for jitter.
    random: Random,
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    /// What the per-request sources said last, by registry key.
    seen: Mutex<HashMap<String, Seen>>,
}

/// The last answer of a per-request source for one registry, for
/// `regent ls`: never its secret.
struct Seen {
    key: RegistryKey,
    source: &'static str,
    first: SystemTime,
    last_get: SystemTime,
    last_ok: Option<SystemTime>,
    username: Option<String>,
    last_error: Option<String>,
}

/// A per-request source that takes longer than this fails.
const PER_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

struct Slot {
    state: Mutex<State>,
}

struct State {
    source: Arc<dyn Source>,
    /// The request the slot was created for; refreshes repeat it.
    request: SourceRequest,
    /// The registry keys this slot has served, for `regent ls`.
    registries: BTreeSet<String>,
    token: Option<Cached>,
    inflight: Option<watch::Receiver<bool>>,
    created: SystemTime,
    last_refresh: Option<SystemTime>,
    last_error: Option<SourceError>,
    failures: u32,
    /// No new fetch before this time (backoff).
    not_before: Option<SystemTime>,
    timer: Option<JoinHandle<()>>,
}

struct Cached {
    username: String,
    secret: Secret,
    expires_at: Option<SystemTime>,
    /// Stop handing it out at this time.
    usable_until: Option<SystemTime>,
    refresh_at: Option<SystemTime>,
}

impl Cached {
    fn usable(&self, now: SystemTime) -> bool {
        self.usable_until.is_none_or(|until| now < until)
    }

    fn token(&self) -> Token {
        Token {
            username: self.username.clone(),
            secret: self.secret.clone(),
            expires_at: self.expires_at,
        }
    }
}

impl Drop for State {
    fn drop(&mut self) {
        if let Some(timer) = self.timer.take() {
            timer.abort();
        }
    }
}

impl Engine {
    pub fn new(policy: Policy, ctx: Context) -> Arc<Engine> {
        Arc::new(Engine {
            clock: ctx.clock.clone(),
            policy,
            ctx,
            random: default_random(),
            slots: Mutex::new(HashMap::new()),
            seen: Mutex::new(HashMap::new()),
        })
    }

    #[cfg(test)]
    fn with_random(
        clock: Arc<dyn Clock>,
        policy: Policy,
        random: impl Fn() -> f64 + Send + Sync + 'static,
    ) -> Arc<Engine> {
        Arc::new(Engine {
            ctx: Context::without_secrets().with_clock(clock.clone()),
            clock,
            policy,
            random: Box::new(random),
            slots: Mutex::new(HashMap::new()),
            seen: Mutex::new(HashMap::new()),
        })
    }

    /// A usable token for `req` from `source`: the cached one, or the result
    /// of the one fetch in flight, or of a new fetch.
    pub async fn get(
        self: &Arc<Self>,
        source: Arc<dyn Source>,
        req: SourceRequest,
    ) -> Result<Token, Unavailable> {
        if source.per_request() {
            return self.per_request(source, req).await;
        }
        let slot_key = format!("{}:{}", source.name(), source.cache_key(&req));
        let key = req.key.as_str().to_owned();
        let slot = {
            let mut slots = self.slots.lock().expect("slots lock");
            slots
                .entry(slot_key)
                .or_insert_with(|| {
                    Arc::new(Slot {
                        state: Mutex::new(State {
                            source,
                            request: req,
                            registries: BTreeSet::new(),
                            token: None,
                            inflight: None,
                            created: self.clock.now(),
                            last_refresh: None,
                            last_error: None,
                            failures: 0,
                            not_before: None,
                            timer: None,
                        }),
                    })
                })
                .clone()
        };
        let mut wait = {
            let mut st = slot.state.lock().expect("slot lock");
            st.registries.insert(key.clone());
            let now = self.clock.now();
            if let Some(cached) = st.token.as_ref().filter(|c| c.usable(now)) {
                let token = cached.token();
                self.refresh_if_due(&slot, &mut st, now);
                return Ok(token);
            }
            match (&st.inflight, st.not_before) {
                (Some(rx), _) => rx.clone(),
                (None, Some(not_before)) if now < not_before => {
                    return Err(self.failure(&st, &key, now));
                }
                (None, _) => self.start_fetch(&slot, &mut st),
            }
        };
        let _ = wait.wait_for(|done| *done).await;
        let st = slot.state.lock().expect("slot lock");
        let now = self.clock.now();
        match st.token.as_ref().filter(|c| c.usable(now)) {
            Some(cached) => Ok(cached.token()),
            None => Err(self.failure(&st, &key, now)),
        }
    }

    /// A per-request source ([`Source::per_request`]): asked at every get,
    /// bounded in time, never cached; what it said is kept for `regent ls`.
    async fn per_request(
        &self,
        source: Arc<dyn Source>,
        req: SourceRequest,
    ) -> Result<Token, Unavailable> {
        let name = source.name();
        let timeout = self.policy.fetch_timeout.min(PER_REQUEST_TIMEOUT);
        let result = match tokio::time::timeout(timeout, source.fetch(&req, &self.ctx)).await {
            Ok(result) => result,
            Err(_) => Err(SourceError::transient(format!(
                "the {name} source did not answer within {}s",
                timeout.as_secs()
            ))),
        };
        let now = self.clock.now();
        let mut seen = self.seen.lock().expect("seen lock");
        let row = seen
            .entry(req.key.as_str().to_owned())
            .or_insert_with(|| Seen {
                key: req.key.clone(),
                source: name,
                first: now,
                last_get: now,
                last_ok: None,
                username: None,
                last_error: None,
            });
        row.source = name;
        row.last_get = now;
        match result {
            Ok(token) => {
                row.last_ok = Some(now);
                row.username = Some(token.username.clone());
                row.last_error = None;
                Ok(token)
            }
            Err(e) => {
                row.last_error = Some(e.message.clone());
                Err(Unavailable {
                    message: format!(
                        "cannot get credentials for {} from the {name} source: {}",
                        req.key, e.message
                    ),
                    class: Some(e.class),
                    retry_in: None,
                })
            }
        }
    }

    /// Why no token can be handed out.
    fn failure(&self, st: &State, key: &str, now: SystemTime) -> Unavailable {
        let reason = st
            .last_error
            .as_ref()
            .map_or("no token was fetched yet", |e| e.message.as_str());
        let mut msg = match st.token.as_ref().and_then(|c| c.expires_at) {
            Some(exp) if now >= exp => format!(
                "the token for {key} expired at {} and refreshing it failed: {reason}",
                rfc3339(exp)
            ),
            Some(exp) => format!(
                "the token for {key} expires at {}, too soon to hand out, and refreshing it \
                 failed: {reason}",
                rfc3339(exp)
            ),
            None => format!(
                "cannot get a token for {key} from the {} source: {reason}",
                st.source.name()
            ),
        };
        let retry_in = st
            .not_before
            .and_then(|nb| nb.duration_since(now).ok())
            .filter(|w| !w.is_zero());
        if let Some(wait) = retry_in {
            msg.push_str(&format!(
                " (next attempt in {}s)",
                wait.as_secs_f64().ceil() as u64
            ));
        }
        Unavailable {
            message: msg,
            class: st.last_error.as_ref().map(|e| e.class),
            retry_in,
        }
    }

    /// Starts a background refresh when one is due and allowed.
    fn refresh_if_due(self: &Arc<Self>, slot: &Arc<Slot>, st: &mut State, now: SystemTime) {
        if st.inflight.is_some() {
            return;
        }
        let Some(cached) = st.token.as_ref().filter(|c| c.usable(now)) else {
            // Expired: the next get fetches.
            return;
        };
        if st
            .last_error
            .as_ref()
            .is_some_and(SourceError::is_permanent)
        {
            return;
        }
        let Some(refresh_at) = cached.refresh_at else {
            return;
        };
        if now < refresh_at {
            if st.timer.is_none() {
                self.schedule(slot, st, refresh_at);
            }
            return;
        }
        if let Some(not_before) = st.not_before.filter(|nb| now < *nb) {
            if st.timer.is_none() {
                self.schedule(slot, st, not_before);
            }
            return;
        }
        tracing::debug!(key = %st.request.key, source = st.source.name(), "refreshing ahead");
        let _ = self.start_fetch(slot, st);
    }

    fn start_fetch(self: &Arc<Self>, slot: &Arc<Slot>, st: &mut State) -> watch::Receiver<bool> {
        let (tx, rx) = watch::channel(false);
        st.inflight = Some(rx.clone());
        let source = st.source.clone();
        let request = st.request.clone();
        let ctx = self.ctx.clone();
        let timeout = self.policy.fetch_timeout;
        let engine = self.clone();
        let slot = slot.clone();
        tokio::spawn(async move {
            let name = source.name();
            let mut fetch = tokio::spawn(async move { source.fetch(&request, &ctx).await });
            let result = match tokio::time::timeout(timeout, &mut fetch).await {
                Ok(Ok(result)) => result,
                Ok(Err(e)) => Err(SourceError::transient(format!(
                    "the {name} source failed unexpectedly ({e}); see the agent log"
                ))),
                Err(_) => {
                    fetch.abort();
                    Err(SourceError::transient(format!(
                        "the {name} source did not answer within {}s",
                        timeout.as_secs()
                    )))
                }
            };
            engine.complete(&slot, result);
            let _ = tx.send(true);
        });
        rx
    }

    fn complete(self: &Arc<Self>, slot: &Arc<Slot>, result: Result<Token, SourceError>) {
        let mut st = slot.state.lock().expect("slot lock");
        let now = self.clock.now();
        st.inflight = None;
        let result = result.and_then(|token| self.cache(token, now));
        match result {
            Ok(cached) => {
                let refresh_at = cached.refresh_at;
                tracing::info!(
                    key = %st.request.key,
                    source = st.source.name(),
                    expires_in_secs = cached
                        .expires_at
                        .and_then(|e| e.duration_since(now).ok())
                        .map(|d| d.as_secs()),
                    "token refreshed"
                );
                st.token = Some(cached);
                st.last_refresh = Some(now);
                st.last_error = None;
                st.failures = 0;
                st.not_before = None;
                match refresh_at {
                    Some(at) => self.schedule(slot, &mut st, at),
                    None => {
                        if let Some(timer) = st.timer.take() {
                            timer.abort();
                        }
                    }
                }
            }
            Err(e) => {
                st.failures = st.failures.saturating_add(1);
                let delay = self
                    .backoff(st.failures)
                    .max(e.retry_after.unwrap_or_default());
                let not_before = now + delay;
                tracing::warn!(
                    key = %st.request.key,
                    source = st.source.name(),
                    permanent = e.is_permanent(),
                    failures = st.failures,
                    retry_in_ms = delay.as_millis() as u64,
                    error = %e,
                    "fetching a token failed"
                );
                let retry = !e.is_permanent() && st.token.as_ref().is_some_and(|c| c.usable(now));
                st.last_error = Some(e);
                st.not_before = Some(not_before);
                if retry {
                    self.schedule(slot, &mut st, not_before);
                }
            }
        }
    }

    /// Checks a fresh token and works out when to refresh it.
    fn cache(&self, token: Token, now: SystemTime) -> Result<Cached, SourceError> {
        let (usable_until, refresh_at) = match token.expires_at {
            None => (None, None),
            Some(exp) => {
                let lifetime = exp.duration_since(now).unwrap_or_default();
                let margin = self
                    .policy
                    .margin_cap
                    .min(lifetime.mul_f64(self.policy.margin_fraction));
                if lifetime <= margin || lifetime.is_zero() {
                    return Err(SourceError::transient(format!(
                        "the source returned a token that expires at {}, which is already past \
                         (check the clock, or the expiry the source reports)",
                        rfc3339(exp)
                    )));
                }
                let spread = self.policy.jitter * (2.0 * (self.random)() - 1.0);
                let fraction = (self.policy.refresh_fraction * (1.0 + spread)).clamp(0.0, 1.0);
                let usable_until = exp - margin;
                let refresh_at = (now + lifetime.mul_f64(fraction)).min(usable_until);
                (Some(usable_until), Some(refresh_at))
            }
        };
        Ok(Cached {
            username: token.username,
            secret: token.secret,
            expires_at: token.expires_at,
            usable_until,
            refresh_at,
        })
    }

    /// Full jitter: a random delay up to base × 2^(failures−1), capped.
    fn backoff(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(20);
        let ceiling = self
            .policy
            .backoff_base
            .saturating_mul(1 << exp)
            .min(self.policy.backoff_cap);
        ceiling.mul_f64((self.random)().clamp(0.0, 1.0))
    }

    fn schedule(self: &Arc<Self>, slot: &Arc<Slot>, st: &mut State, at: SystemTime) {
        if let Some(timer) = st.timer.take() {
            timer.abort();
        }
        let engine: Weak<Engine> = Arc::downgrade(self);
        let weak_slot = Arc::downgrade(slot);
        let sleep = self.clock.sleep_until(at);
        st.timer = Some(tokio::spawn(async move {
            sleep.await;
            if let (Some(engine), Some(slot)) = (engine.upgrade(), weak_slot.upgrade()) {
                let mut st = slot.state.lock().expect("slot lock");
                // This task is finishing: forget it rather than abort it.
                st.timer = None;
                let now = engine.clock.now();
                engine.refresh_if_due(&slot, &mut st, now);
            }
        }));
    }

    /// After a config reload: keeps the slots whose key still resolves to a
    /// source with the same cache key (taking the new source object), drops
    /// the rest with their timers.
    pub fn reconcile(&self, resolve: impl Fn(&RegistryKey) -> Option<Arc<dyn Source>>) {
        let mut slots = self.slots.lock().expect("slots lock");
        let before = slots.len();
        slots.retain(|slot_key, slot| {
            let mut st = slot.state.lock().expect("slot lock");
            match resolve(&st.request.key) {
                Some(source)
                    if format!("{}:{}", source.name(), source.cache_key(&st.request))
                        == *slot_key =>
                {
                    st.source = source;
                    true
                }
                _ => {
                    if let Some(timer) = st.timer.take() {
                        timer.abort();
                    }
                    false
                }
            }
        });
        tracing::debug!(
            kept = slots.len(),
            dropped = before - slots.len(),
            "token cache reconciled"
        );
        drop(slots);
        self.seen
            .lock()
            .expect("seen lock")
            .retain(|_, row| resolve(&row.key).is_some_and(|s| s.name() == row.source));
    }

    /// One row per registry served, for `regent ls`.
    pub fn entries(&self) -> Vec<EntryInfo> {
        let slots = self.slots.lock().expect("slots lock");
        let mut rows = Vec::new();
        for slot in slots.values() {
            let st = slot.state.lock().expect("slot lock");
            for key in &st.registries {
                rows.push(EntryInfo {
                    server_url: key.clone(),
                    key: key.clone(),
                    username: st
                        .token
                        .as_ref()
                        .map(|c| c.username.clone())
                        .unwrap_or_default(),
                    source: st.source.name().to_owned(),
                    created: unix(st.created),
                    updated: unix(st.last_refresh.unwrap_or(st.created)),
                    expires: st.token.as_ref().and_then(|c| c.expires_at).map(unix),
                    last_refresh: st.last_refresh.map(unix),
                    last_error: st.last_error.as_ref().map(|e| e.message.clone()),
                });
            }
        }
        drop(slots);
        for row in self.seen.lock().expect("seen lock").values() {
            rows.push(EntryInfo {
                server_url: row.key.as_str().to_owned(),
                key: row.key.as_str().to_owned(),
                username: row.username.clone().unwrap_or_default(),
                source: row.source.to_owned(),
                created: unix(row.first),
                updated: unix(row.last_get),
                expires: None,
                last_refresh: row.last_ok.map(unix),
                last_error: row.last_error.clone(),
            });
        }
        rows.sort_by(|a, b| a.key.cmp(&b.key));
        rows
    }
}

fn unix(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{} (Unix time)", unix(t)))
}

/// A small splitmix64 generator seeded from the clock and the pid: jitter
/// needs spread, not unpredictability.
fn default_random() -> Random {
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
        ^ (u64::from(std::process::id()) << 32);
    let state = AtomicU64::new(seed);
    Box::new(move || {
        let mut z = state
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::sync::atomic::AtomicUsize;
    use tokio::sync::Semaphore;

    /// A clock the test moves by hand.
    struct ManualClock {
        now: watch::Sender<SystemTime>,
        /// Timers never fire: a machine that slept through them.
        frozen_timers: bool,
    }

    impl ManualClock {
        fn new() -> Arc<ManualClock> {
            Self::with_timers(true)
        }

        fn with_timers(fire: bool) -> Arc<ManualClock> {
            let (now, _) = watch::channel(UNIX_EPOCH + Duration::from_secs(1_800_000_000));
            Arc::new(ManualClock {
                now,
                frozen_timers: !fire,
            })
        }

        fn advance(&self, by: Duration) {
            self.now.send_modify(|t| *t += by);
        }
    }

    impl Clock for ManualClock {
        fn now(&self) -> SystemTime {
            *self.now.borrow()
        }

        fn sleep_until(&self, deadline: SystemTime) -> crate::clock::Sleep {
            let mut rx = self.now.subscribe();
            let frozen = self.frozen_timers;
            Box::pin(async move {
                if frozen {
                    std::future::pending::<()>().await;
                }
                let _ = rx.wait_for(|t| *t >= deadline).await;
            })
        }
    }

    #[derive(Clone, Copy, Debug)]
    enum Step {
        /// A token living this long.
        Ok(Duration),
        Transient(Option<Duration>),
        Permanent,
    }

    /// A source that follows a script, counts its calls and waits for a
    /// permit before each answer when gated.
    struct Fake {
        clock: Arc<ManualClock>,
        calls: AtomicUsize,
        script: Mutex<VecDeque<Step>>,
        then: Step,
        gate: Option<Semaphore>,
    }

    impl Fake {
        fn new(clock: &Arc<ManualClock>, script: &[Step], then: Step) -> Arc<Fake> {
            Arc::new(Fake {
                clock: clock.clone(),
                calls: AtomicUsize::new(0),
                script: Mutex::new(script.iter().copied().collect()),
                then,
                gate: None,
            })
        }

        fn gated(clock: &Arc<ManualClock>, then: Step) -> Arc<Fake> {
            Arc::new(Fake {
                clock: clock.clone(),
                calls: AtomicUsize::new(0),
                script: Mutex::new(VecDeque::new()),
                then,
                gate: Some(Semaphore::new(0)),
            })
        }

        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }

        fn open(&self, n: usize) {
            self.gate.as_ref().expect("gated").add_permits(n);
        }
    }

    impl Source for Fake {
        fn name(&self) -> &'static str {
            "fake"
        }

        fn cache_key(&self, _req: &SourceRequest) -> String {
            "one".into()
        }

        fn fetch<'a>(
            &'a self,
            _req: &'a SourceRequest,
            _ctx: &'a Context,
        ) -> crate::sources::BoxFuture<'a, Result<Token, SourceError>> {
            Box::pin(async move {
                let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
                if let Some(gate) = &self.gate {
                    gate.acquire().await.expect("gate").forget();
                }
                let step = self.script.lock().unwrap().pop_front().unwrap_or(self.then);
                match step {
                    Step::Ok(life) => Ok(Token {
                        username: "u".into(),
                        secret: Secret::new(format!("tok-{n}")),
                        expires_at: Some(self.clock.now() + life),
                    }),
                    Step::Transient(after) => {
                        let e = SourceError::transient(format!("network down #{n}"));
                        Err(match after {
                            Some(a) => e.retry_after(a),
                            None => e,
                        })
                    }
                    Step::Permanent => Err(SourceError::permanent(format!("access denied #{n}"))),
                }
            })
        }
    }

    const S: Duration = Duration::from_secs(1);

    fn req() -> SourceRequest {
        SourceRequest {
            key: regent_shared::registry::canonical("r.example").unwrap(),
            server_url: "https://r.example".into(),
            env: Default::default(),
        }
    }

    /// No jitter in the refresh point, the full backoff ceiling every time.
    fn engine(clock: &Arc<ManualClock>) -> Arc<Engine> {
        let policy = Policy {
            jitter: 0.0,
            ..Policy::default()
        };
        Engine::with_random(clock.clone(), policy, || 0.999_999)
    }

    async fn settle() {
        for _ in 0..200 {
            tokio::task::yield_now().await;
        }
    }

    async fn get(e: &Arc<Engine>, f: &Arc<Fake>) -> Result<String, String> {
        e.get(f.clone(), req())
            .await
            .map(|t| t.secret.expose().to_owned())
            .map_err(|e| e.to_string())
    }

    #[tokio::test]
    async fn two_hundred_concurrent_gets_make_one_call() {
        let clock = ManualClock::new();
        let fake = Fake::gated(&clock, Step::Ok(100 * S));
        let e = engine(&clock);
        let mut tasks = Vec::new();
        for _ in 0..200 {
            let (e, f) = (e.clone(), fake.clone());
            tasks.push(tokio::spawn(async move { get(&e, &f).await }));
        }
        settle().await;
        assert_eq!(fake.calls(), 1);
        fake.open(1);
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap(), "tok-1");
        }
        assert_eq!(fake.calls(), 1);
        assert_eq!(get(&e, &fake).await.unwrap(), "tok-1");
        assert_eq!(fake.calls(), 1);
    }

    #[tokio::test]
    async fn refreshes_ahead_in_the_background_without_blocking_gets() {
        let clock = ManualClock::new();
        let fake = Fake::gated(&clock, Step::Ok(100 * S));
        let e = engine(&clock);
        fake.open(1);
        assert_eq!(get(&e, &fake).await.unwrap(), "tok-1");
        clock.advance(40 * S);
        settle().await;
        assert_eq!(get(&e, &fake).await.unwrap(), "tok-1");
        assert_eq!(fake.calls(), 1, "no refresh before half the lifetime");
        // Past half the lifetime the timer starts a refresh, held at the gate.
        clock.advance(11 * S);
        settle().await;
        assert_eq!(fake.calls(), 2, "the timer refreshed ahead");
        let during = tokio::time::timeout(Duration::from_secs(5), get(&e, &fake)).await;
        assert_eq!(
            during
                .expect("a get during a refresh must not wait")
                .unwrap(),
            "tok-1"
        );
        fake.open(1);
        settle().await;
        assert_eq!(get(&e, &fake).await.unwrap(), "tok-2");
        assert_eq!(fake.calls(), 2);
        let ls = e.entries();
        assert_eq!(ls.len(), 1);
        assert_eq!(ls[0].source, "fake");
        assert!(ls[0].expires.is_some() && ls[0].last_refresh.is_some());
        assert!(ls[0].last_error.is_none());
    }

    #[tokio::test]
    async fn a_get_notices_a_due_refresh_and_an_expiry_when_timers_slept() {
        let clock = ManualClock::with_timers(false);
        let fake = Fake::new(&clock, &[], Step::Ok(10 * S));
        let e = engine(&clock);
        assert_eq!(get(&e, &fake).await.unwrap(), "tok-1");
        clock.advance(6 * S);
        settle().await;
        assert_eq!(fake.calls(), 1, "the timer is asleep");
        // Due: served from the cache, refreshed in the background.
        assert_eq!(get(&e, &fake).await.unwrap(), "tok-1");
        settle().await;
        assert_eq!(fake.calls(), 2);
        assert_eq!(get(&e, &fake).await.unwrap(), "tok-2");
        // Long past expiry (a suspended laptop): never the old token.
        clock.advance(3600 * S);
        assert_eq!(get(&e, &fake).await.unwrap(), "tok-3");
    }

    #[tokio::test]
    async fn never_serves_an_expired_token() {
        let clock = ManualClock::new();
        let fake = Fake::new(&clock, &[Step::Ok(10 * S)], Step::Transient(None));
        let e = engine(&clock);
        assert_eq!(get(&e, &fake).await.unwrap(), "tok-1");
        for _ in 0..85 {
            clock.advance(Duration::from_millis(100));
            settle().await;
            assert_eq!(get(&e, &fake).await.unwrap(), "tok-1");
        }
        // 8.5 s: valid, refreshes failing in the background.
        assert!(fake.calls() >= 2);
        // The margin: 1 s (10 % of 10 s) before expiry it is no longer served.
        clock.advance(Duration::from_millis(600));
        let err = get(&e, &fake).await.unwrap_err();
        assert!(err.contains("too soon to hand out"), "{err}");
        assert!(err.contains("network down"), "{err}");
        clock.advance(2 * S);
        let err = get(&e, &fake).await.unwrap_err();
        assert!(
            err.contains("the token for r.example expired at 2027-01-15T08:00:10Z"),
            "{err}"
        );
        assert!(err.contains("refreshing it failed: network down"), "{err}");
        for _ in 0..20 {
            clock.advance(60 * S);
            settle().await;
            assert!(get(&e, &fake).await.is_err());
        }
    }

    #[tokio::test]
    async fn transient_errors_back_off_exponentially() {
        let clock = ManualClock::new();
        let t = Step::Transient(None);
        let fake = Fake::new(&clock, &[t, t, t], Step::Ok(100 * S));
        let e = engine(&clock);
        let err = get(&e, &fake).await.unwrap_err();
        assert!(
            err.contains("cannot get a token for r.example from the fake source: network down #1"),
            "{err}"
        );
        // Backoff 1 s, then 2 s, then 4 s: no call inside a window.
        for (window, calls) in [(1, 1), (2, 2), (4, 3)] {
            let err = get(&e, &fake).await.unwrap_err();
            assert!(err.contains("next attempt in"), "{err}");
            assert_eq!(fake.calls(), calls);
            clock.advance(Duration::from_millis(window * 1000 - 100));
            assert!(get(&e, &fake).await.is_err());
            assert_eq!(fake.calls(), calls, "called inside the backoff window");
            clock.advance(Duration::from_millis(100));
            let _ = get(&e, &fake).await;
            assert_eq!(fake.calls(), calls + 1);
        }
        assert_eq!(get(&e, &fake).await.unwrap(), "tok-4");
    }

    #[tokio::test]
    async fn backoff_honours_retry_after_and_the_cap() {
        let clock = ManualClock::new();
        let fake = Fake::new(
            &clock,
            &[Step::Transient(Some(30 * S))],
            Step::Transient(None),
        );
        let e = engine(&clock);
        assert!(get(&e, &fake).await.is_err());
        clock.advance(29 * S);
        let err = e
            .get(fake.clone(), req())
            .await
            .err()
            .expect("in the window");
        assert_eq!(err.class, Some(ErrorClass::Transient));
        assert_eq!(err.retry_in, Some(S), "the source's retry-after, left");
        assert_eq!(fake.calls(), 1, "retry-after not honoured");
        clock.advance(S);
        assert!(get(&e, &fake).await.is_err());
        assert_eq!(fake.calls(), 2);
        assert_eq!(e.backoff(40), Duration::from_secs(300).mul_f64(0.999_999));
    }

    #[tokio::test]
    async fn permanent_errors_are_not_retried_automatically() {
        let clock = ManualClock::new();
        let fake = Fake::new(&clock, &[Step::Ok(100 * S)], Step::Permanent);
        let e = engine(&clock);
        assert_eq!(get(&e, &fake).await.unwrap(), "tok-1");
        clock.advance(51 * S);
        settle().await;
        assert_eq!(fake.calls(), 2, "the refresh ahead ran");
        // The old token keeps being served; nothing retries the refresh.
        for _ in 0..38 {
            clock.advance(S);
            settle().await;
            assert_eq!(get(&e, &fake).await.unwrap(), "tok-1");
        }
        assert_eq!(fake.calls(), 2);
        assert_eq!(
            e.entries()[0].last_error.as_deref(),
            Some("access denied #2")
        );
        // Inside the margin a get needs a token and tries once; it fails.
        clock.advance(2 * S);
        let err = e
            .get(fake.clone(), req())
            .await
            .err()
            .expect("inside the margin");
        assert_eq!(err.class, Some(ErrorClass::Permanent));
        assert!(err.to_string().contains("access denied #3"), "{err}");
        assert_eq!(fake.calls(), 3);
        clock.advance(3600 * S);
        settle().await;
        assert_eq!(fake.calls(), 3, "a permanent error was retried by a timer");
    }

    #[tokio::test]
    async fn keeps_serving_a_valid_token_while_retrying() {
        let clock = ManualClock::new();
        let t = Step::Transient(None);
        let fake = Fake::new(&clock, &[Step::Ok(100 * S), t, t], Step::Ok(100 * S));
        let e = engine(&clock);
        assert_eq!(get(&e, &fake).await.unwrap(), "tok-1");
        clock.advance(50 * S);
        settle().await;
        assert_eq!(fake.calls(), 2);
        assert_eq!(get(&e, &fake).await.unwrap(), "tok-1");
        assert!(e.entries()[0].last_error.is_some());
        clock.advance(S);
        settle().await;
        assert_eq!(fake.calls(), 3, "the background retry after 1 s");
        assert_eq!(get(&e, &fake).await.unwrap(), "tok-1");
        clock.advance(2 * S);
        settle().await;
        assert_eq!(fake.calls(), 4);
        assert_eq!(get(&e, &fake).await.unwrap(), "tok-4");
        assert!(e.entries()[0].last_error.is_none());
    }

    #[tokio::test]
    async fn a_token_already_expired_is_refused() {
        let clock = ManualClock::new();
        let fake = Fake::new(&clock, &[Step::Ok(Duration::ZERO)], Step::Ok(10 * S));
        let e = engine(&clock);
        let err = get(&e, &fake).await.unwrap_err();
        assert!(err.contains("already past"), "{err}");
    }

    #[tokio::test]
    async fn reconcile_drops_slots_whose_source_changed() {
        let clock = ManualClock::new();
        let fake = Fake::new(&clock, &[], Step::Ok(100 * S));
        let e = engine(&clock);
        assert_eq!(get(&e, &fake).await.unwrap(), "tok-1");
        let same: Arc<dyn Source> = fake.clone();
        e.reconcile(|_| Some(same.clone()));
        assert_eq!(e.entries().len(), 1);
        assert_eq!(get(&e, &fake).await.unwrap(), "tok-1");
        e.reconcile(|_| None);
        assert!(e.entries().is_empty());
        assert_eq!(get(&e, &fake).await.unwrap(), "tok-2");
    }

    #[test]
    fn default_random_spreads_in_unit_interval() {
        let r = default_random();
        let xs: Vec<f64> = (0..1000).map(|_| r()).collect();
        assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
        assert!(xs.iter().any(|x| *x < 0.1) && xs.iter().any(|x| *x > 0.9));
    }
}
