//! Memory budgets and owner quotas: what the live state may hold, per run, per owner and for the whole server, in
//! state bytes ([`crate::model::size`]), and the per-owner counters (active runs, run starts, connections). Each owner has
//! one [`Account`], shared by its runs and connections, so the patch path updates it through a pointer without a
//! map lookup. Accounts of owners that hold nothing are swept away, so the map does not grow with every owner ever
//! seen.

use crate::config::Limits;
use crate::engine::ratelimit::{TokenBucket, Verdict};
use crate::error::{Error, ErrorCode, Result};
use crate::model::size::Budget;
use dashmap::DashMap;
use parking_lot::Mutex;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// One owner's usage and quotas.
#[derive(Debug)]
pub struct Account {
    /// Runs of this owner in some space (active, or failed and lingering).
    active: AtomicUsize,
    /// State bytes of those runs.
    bytes: AtomicUsize,
    /// Authenticated connections of this owner.
    connections: AtomicUsize,
    /// Spaces this owner created that still exist.
    spaces: AtomicUsize,
    /// The bucket runs are started from.
    starts: Mutex<TokenBucket>,
}

impl Account {
    /// State bytes of the owner's live runs.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }
}

/// An active-run slot taken from an owner's quota, and the state bytes admitted for the run so far. Both are given
/// back when it is dropped (on every early return, panics included), unless the run took them over with
/// [`RunQuota::keep`].
#[derive(Debug)]
pub struct RunQuota<'a> {
    budgets: &'a Budgets,
    account: Option<Arc<Account>>,
    bytes: usize,
}

impl RunQuota<'_> {
    /// Admits the new run's `bytes`, or says which budget they would pass.
    pub fn admit(&mut self, bytes: usize) -> Result<()> {
        let account = self.account.as_ref().expect("a quota not yet kept");
        self.budgets.admit(account, 0, bytes as isize).map_err(|b| {
            let e = b.refusal(bytes);
            crate::telemetry::refusal(e.code);
            e
        })?;
        self.bytes += bytes;
        Ok(())
    }

    /// The account the quota was taken from.
    pub fn account(&self) -> Arc<Account> {
        self.account.clone().expect("a quota not yet kept")
    }

    /// The run now holds the slot and its bytes: [`Budgets::end_run`] gives them back.
    pub fn keep(mut self) -> Arc<Account> {
        self.bytes = 0;
        self.account.take().expect("a quota not yet kept")
    }
}

impl Drop for RunQuota<'_> {
    fn drop(&mut self) {
        if let Some(a) = self.account.take() {
            self.budgets.grow(&a, -(self.bytes as isize));
            a.active.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// A connection counted against its owner's connection quota, given back when dropped (on every exit path of the
/// session, panics included).
#[derive(Debug)]
pub struct ConnectionQuota {
    pub owner: String,
    account: Arc<Account>,
}

impl Drop for ConnectionQuota {
    fn drop(&mut self) {
        self.account.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A space counted against its creator's space quota, given back when the space is dropped (once reclaimed).
#[derive(Debug)]
pub struct SpaceQuota(Arc<Account>);

impl Drop for SpaceQuota {
    fn drop(&mut self) {
        self.0.spaces.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Adds `grown` (negative: takes it away) to `counter`.
fn add_signed(counter: &AtomicUsize, grown: isize) {
    if grown >= 0 {
        counter.fetch_add(grown as usize, Ordering::Relaxed);
    } else {
        counter.fetch_sub(grown.unsigned_abs(), Ordering::Relaxed);
    }
}

/// Adds `n` to `counter` unless that takes it past `cap`.
fn add_within(counter: &AtomicUsize, n: usize, cap: usize) -> bool {
    counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_add(n).filter(|t| *t <= cap)).is_ok()
}

/// The budgets and every owner's account.
#[derive(Debug)]
pub struct Budgets {
    limits: Limits,
    /// State bytes of every live run, plus each space's `currentRun`.
    state: AtomicUsize,
    owners: DashMap<String, Arc<Account>>,
}

impl Budgets {
    pub fn new(limits: Limits) -> Budgets {
        Budgets { limits, state: AtomicUsize::new(0), owners: DashMap::new() }
    }

    /// State bytes held by the whole server.
    pub fn state_bytes(&self) -> usize {
        self.state.load(Ordering::Relaxed)
    }

    /// Whether the server budget is spent: less than one message's worth of it is left, so the next write that
    /// grows state may be refused.
    pub fn over_capacity(&self) -> bool {
        self.state_bytes().saturating_add(self.limits.max_message_bytes) > self.limits.max_state_bytes
    }

    /// Admits `grown` more state bytes for a run that holds `run_bytes` of `account`'s: counts them for the
    /// owner and the server, or counts nothing and says which budget they would pass. Each count is checked and
    /// added in one atomic step, so concurrent writes never take a budget past its limit together. Shrinking is
    /// always admitted.
    pub fn admit(&self, account: &Account, run_bytes: usize, grown: isize) -> Result<(), Budget> {
        if grown <= 0 {
            self.grow(account, grown);
            return Ok(());
        }
        let n = grown as usize;
        if run_bytes.saturating_add(n) > self.limits.max_run_bytes {
            return Err(Budget::Run);
        }
        if !add_within(&account.bytes, n, self.limits.max_owner_state_bytes) {
            return Err(Budget::Owner);
        }
        if !add_within(&self.state, n, self.limits.max_state_bytes) {
            account.bytes.fetch_sub(n, Ordering::Relaxed);
            return Err(Budget::Server);
        }
        Ok(())
    }

    /// Reserves whatever growth both the owner's and the server's budgets have left, for a write whose growth
    /// bound did not fit: its allowance, with the budget that bounds it. The write settles it with
    /// [`Budgets::grow`] by what it grew minus the allowance (or gives it all back when refused).
    pub fn reserve_headroom(&self, account: &Account) -> crate::space::event::Allowance {
        let take_all = |counter: &AtomicUsize, cap: usize, most: usize| {
            let mut taken = 0;
            let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                taken = cap.saturating_sub(v).min(most);
                Some(v + taken)
            });
            taken
        };
        let owner = take_all(&account.bytes, self.limits.max_owner_state_bytes, usize::MAX);
        let both = take_all(&self.state, self.limits.max_state_bytes, owner);
        account.bytes.fetch_sub(owner - both, Ordering::Relaxed);
        let budget = if both < owner { Budget::Server } else { Budget::Owner };
        crate::space::event::Allowance { bytes: both as u64, budget }
    }

    /// Counts `grown` state bytes (negative: freed) for the account and the server, whatever the budgets say
    /// (for changes that are never refused: a failure's `error`, and bytes given back).
    pub fn grow(&self, account: &Account, grown: isize) {
        add_signed(&account.bytes, grown);
        add_signed(&self.state, grown);
    }

    /// Counts state bytes that belong to no owner (a space's `currentRun`).
    pub fn grow_shared(&self, grown: isize) {
        add_signed(&self.state, grown);
    }

    /// The owner's account, created on first use.
    fn account<T>(&self, owner: &str, f: impl FnOnce(&Arc<Account>) -> Result<T>) -> Result<T> {
        // The entry guard is held while `f` counts: a sweep (which takes the same shard lock) cannot remove an
        // account between the lookup and the count.
        let entry = self.owners.entry(owner.to_string()).or_insert_with(|| {
            Arc::new(Account {
                active: AtomicUsize::new(0),
                bytes: AtomicUsize::new(0),
                connections: AtomicUsize::new(0),
                spaces: AtomicUsize::new(0),
                starts: Mutex::new(TokenBucket::new(
                    self.limits.runs_per_second_per_owner,
                    self.limits.run_burst_per_owner,
                )),
            })
        });
        f(&entry)
    }

    /// Takes one run start from the owner's bucket and one active-run slot, or says which quota is spent.
    pub fn start_run(&self, owner: &str) -> Result<RunQuota<'_>> {
        self.account(owner, |a| {
            if a.active.load(Ordering::Relaxed) >= self.limits.max_active_runs_per_owner {
                return Err(Error::new(ErrorCode::QuotaActiveRuns, "too many active runs for this owner"));
            }
            if a.starts.lock().check() != Verdict::Allow {
                return Err(Error::new(ErrorCode::QuotaRunsStarted, "this owner starts runs too fast"));
            }
            a.active.fetch_add(1, Ordering::Relaxed);
            Ok(RunQuota { budgets: self, account: Some(a.clone()), bytes: 0 })
        })
    }

    /// Counts a run another node admitted (a cluster node holds every run of the spaces it holds): its
    /// active-run slot and its state bytes, never refused. [`Budgets::end_run`] gives them back.
    pub fn adopt_run(&self, owner: &str, bytes: usize) -> Arc<Account> {
        let account = self.account(owner, |a| {
            a.active.fetch_add(1, Ordering::Relaxed);
            Ok(a.clone())
        });
        let account = account.expect("adopting never fails");
        self.grow(&account, bytes as isize);
        account
    }

    /// Gives back a run's active-run slot and its state bytes.
    pub fn end_run(&self, account: &Account, bytes: usize) {
        self.grow(account, -(bytes as isize));
        account.active.fetch_sub(1, Ordering::Relaxed);
    }

    /// Counts an authenticated connection of `owner`, or refuses it past the quota.
    pub fn open_connection(&self, owner: &str) -> Result<ConnectionQuota> {
        self.account(owner, |a| {
            if a.connections.load(Ordering::Relaxed) >= self.limits.max_connections_per_owner {
                return Err(Error::new(ErrorCode::QuotaConnections, "too many connections for this owner"));
            }
            a.connections.fetch_add(1, Ordering::Relaxed);
            Ok(ConnectionQuota { owner: owner.to_string(), account: a.clone() })
        })
    }

    /// Counts a space `owner` creates, or refuses it past the owner's space quota.
    pub fn create_space(&self, owner: &str) -> Result<SpaceQuota> {
        self.account(owner, |a| {
            if a.spaces.load(Ordering::Relaxed) >= self.limits.max_spaces_per_owner {
                return Err(Error::new(ErrorCode::QuotaSpaces, "this owner has created as many spaces as allowed"));
            }
            a.spaces.fetch_add(1, Ordering::Relaxed);
            Ok(SpaceQuota(a.clone()))
        })
    }

    /// Forgets the accounts of owners that hold nothing: no run, no connection, no space, and a full start bucket (so that
    /// forgetting it gives the owner nothing it would not have had anyway).
    pub fn sweep(&self) {
        let now = tokio::time::Instant::now();
        self.owners.retain(|_, a| {
            a.active.load(Ordering::Relaxed) > 0
                || a.connections.load(Ordering::Relaxed) > 0
                || a.spaces.load(Ordering::Relaxed) > 0
                || a.bytes() > 0
                || !a.starts.lock().is_full_at(now)
        });
    }

    /// Accounts held now (for tests and metrics).
    pub fn accounts(&self) -> usize {
        self.owners.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits { max_run_bytes: 100, max_owner_state_bytes: 150, max_state_bytes: 200, ..Limits::default() }
    }

    #[test]
    fn each_budget_refuses_what_would_pass_it_and_nothing_is_counted_then() {
        let b = Budgets::new(limits());
        let ann = b.start_run("ann").unwrap();
        let bob = b.start_run("bob").unwrap();
        let (ann, bob) = (ann.keep(), bob.keep());
        assert_eq!(b.admit(&ann, 0, 101), Err(Budget::Run));
        assert_eq!(b.admit(&ann, 0, 90), Ok(()));
        assert_eq!(b.admit(&ann, 10, 50), Ok(()), "a second run of the same owner");
        assert_eq!(b.admit(&ann, 0, 11), Err(Budget::Owner), "140 + 11 > 150");
        assert_eq!(b.admit(&bob, 0, 70), Err(Budget::Server), "140 + 70 > 200");
        assert_eq!((ann.bytes(), bob.bytes(), b.state_bytes()), (140, 0, 140));
        assert_eq!(b.admit(&ann, 90, -40), Ok(()), "shrinking is always admitted");
        assert_eq!(b.admit(&bob, 0, 70), Ok(()));
        b.end_run(&ann, 100);
        b.end_run(&bob, 70);
        assert_eq!(b.state_bytes(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn quotas_come_back_on_every_exit_and_idle_accounts_are_swept() {
        let b = Budgets::new(Limits { run_burst_per_owner: 10, runs_per_second_per_owner: 10, ..limits() });
        for i in 0..50 {
            let mut q = b.start_run(&format!("owner{i}")).unwrap();
            q.admit(40).unwrap();
            // Dropped without `keep`: as on an early return.
        }
        let c = b.open_connection("owner0").unwrap();
        assert_eq!((b.state_bytes(), b.accounts()), (0, 50));
        b.sweep();
        assert_eq!(b.accounts(), 50, "their start buckets are not full yet");
        tokio::time::advance(std::time::Duration::from_secs(1)).await;
        b.sweep();
        assert_eq!(b.accounts(), 1, "only the owner with a connection is left");
        drop(c);
        b.sweep();
        assert_eq!(b.accounts(), 0);
    }
}
