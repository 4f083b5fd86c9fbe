//! Holds: capacity set aside for a request in flight, from the check that reserves it until
//! the usage that settles it, a release, or its expiry (`docs/semantics.md`, "Holds").
//!
//! A hold adds its amounts to the `held` of every counter the check evaluated. Reserving is
//! all or nothing and exact: one lock serialises reserves, and under it each counter is tested
//! (`used + held + amount <= max`) before any is taken, so concurrent reserves never admit more
//! than fits and a refused one leaves no trace. Usage and plain checks never take the lock (they
//! are atomic adds and loads); every change of `held` happens under it, and a hold's capacity
//! is freed exactly once, by whoever removes it from the book (settle, release or expiry).
//!
//! The book also holds other replicas' holds as the read-back finds them in the database, and
//! counts them in `held` too, so that a hold placed on one replica can be settled or released
//! through another. Expiry comes from a due-queue ordered by
//! expiry, never from a scan of every hold.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use uuid::Uuid;

use super::counter::Counter;

use super::level::LimitKind;
use crate::domain::{Micros, WindowRule};

/// A hold's identity: the request and its attempt.
pub type HoldKey = (String, u64);

/// What a hold reserves: nano-dollars, tokens, requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Amounts {
    pub cost: i64,
    pub tokens: i64,
    pub requests: i64,
}

impl Amounts {
    /// The amount of one kind of counter.
    pub fn of(&self, kind: LimitKind) -> i64 {
        match kind {
            LimitKind::Budget => self.cost,
            LimitKind::Tokens => self.tokens,
            LimitKind::Requests => self.requests,
        }
    }
}

/// One counter a hold sets capacity aside on: which limit and dimension, and how much.
#[derive(Debug, Clone)]
pub struct Held {
    pub kind: LimitKind,
    /// The budget's or rate limit's id.
    pub limit: Uuid,
    pub amount: i64,
    /// The counter itself (none when this process does not have the limit: a foreign hold on
    /// a limit deleted since).
    pub counter: Option<Arc<Counter>>,
}

/// A hold, this process's or another's.
#[derive(Debug)]
pub struct Hold {
    pub request_id: String,
    pub attempt: u64,
    pub expires_at: Micros,
    pub reserved: Amounts,
    pub counters: Vec<Held>,
    /// The process that placed it (its writer id).
    pub writer: i64,
    /// Its place in this process's due-queue (set when it enters the book).
    pub seq: u64,
}

impl Hold {
    pub fn key(&self) -> HoldKey {
        (self.request_id.clone(), self.attempt)
    }
}

/// One counter a reserve wants room on.
#[derive(Debug)]
pub struct Want<'a> {
    pub kind: LimitKind,
    pub limit: Uuid,
    pub counter: &'a Arc<Counter>,
    pub rule: &'a WindowRule,
    pub max: i64,
}

/// What a reserve did.
#[derive(Debug)]
pub enum Reserved {
    /// A new hold, placed on every counter.
    Placed(Arc<Hold>),
    /// The same request and attempt hold already: nothing more is held.
    Existing(Arc<Hold>),
    /// The counter at this index of the wanted ones has no room; nothing is held.
    NoRoom(usize),
}

/// The holds this process knows of.
#[derive(Debug)]
pub struct Holds {
    book: Mutex<Book>,
    /// This process's writer id: holds it places carry it.
    me: i64,
    /// Holds in the book (for the hot path: usage skips the book while none are held).
    count: AtomicUsize,
}

#[derive(Debug, Default)]
struct Book {
    live: HashMap<HoldKey, Arc<Hold>>,
    /// Every live hold by expiry (and a sequence number, unique per hold): the due-queue.
    due: BTreeMap<(Micros, u64), HoldKey>,
    /// The sequence number of the last hold entered.
    seq: u64,
    /// This process's holds not yet written, and ended holds (anyone's) whose rows are not
    /// yet deleted.
    placed: Vec<Arc<Hold>>,
    ended: Vec<Arc<Hold>>,
}

/// What a flush takes: holds to write and holds to delete.
#[derive(Debug, Default)]
pub struct HoldChanges {
    pub placed: Vec<Arc<Hold>>,
    /// Another process's hold that ended here also gets a note, so that its writer frees the
    /// capacity too.
    pub ended: Vec<Arc<Hold>>,
}

impl HoldChanges {
    pub fn is_empty(&self) -> bool {
        self.placed.is_empty() && self.ended.is_empty()
    }
}

impl Holds {
    pub fn new(me: i64) -> Holds {
        Holds {
            book: Mutex::default(),
            me,
            count: AtomicUsize::new(0),
        }
    }

    /// The writer id of this process, which its holds carry.
    pub fn writer(&self) -> i64 {
        self.me
    }

    /// A writer id for a new process: positive, never 0.
    pub fn new_writer() -> i64 {
        (rand::random::<u64>() >> 1).max(1) as i64
    }

    fn book(&self) -> MutexGuard<'_, Book> {
        self.book
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Holds known (this process's and others').
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The hold of `request_id` and `attempt`, if it is live.
    pub fn get(&self, request_id: &str, attempt: u64) -> Option<Arc<Hold>> {
        if self.is_empty() {
            return None;
        }
        self.book()
            .live
            .get(&(request_id.to_owned(), attempt))
            .cloned()
    }

    /// Places a hold of `reserved` on every wanted counter, or none: each must have room for
    /// its amount at `now` (`used + held + amount <= max`). The same request and attempt
    /// reserved again returns the hold it has.
    pub fn reserve(
        &self,
        request_id: &str,
        attempt: u64,
        reserved: Amounts,
        expires_at: Micros,
        wants: &[Want<'_>],
        now: Micros,
    ) -> Reserved {
        let key = (request_id.to_owned(), attempt);
        let mut book = self.book();
        if let Some(existing) = book.live.get(&key) {
            return Reserved::Existing(Arc::clone(existing));
        }
        for (i, want) in wants.iter().enumerate() {
            let amount = reserved.of(want.kind);
            let v = want.counter.view(want.rule, now);
            if v.used.saturating_add(v.held).saturating_add(amount) > want.max {
                return Reserved::NoRoom(i);
            }
        }
        let counters = wants
            .iter()
            .map(|w| {
                let amount = reserved.of(w.kind);
                w.counter.hold(amount);
                Held {
                    kind: w.kind,
                    limit: w.limit,
                    amount,
                    counter: Some(Arc::clone(w.counter)),
                }
            })
            .collect();
        book.seq += 1;
        let seq = book.seq;
        let hold = Arc::new(Hold {
            request_id: key.0.clone(),
            attempt,
            expires_at,
            reserved,
            counters,
            writer: self.me,
            seq,
        });
        book.due.insert((expires_at, seq), key.clone());
        book.live.insert(key, Arc::clone(&hold));
        book.placed.push(Arc::clone(&hold));
        self.count.store(book.live.len(), Ordering::Release);
        Reserved::Placed(hold)
    }

    /// Ends the hold of `request_id` and `attempt` if it is live: its capacity is freed (once,
    /// whoever ends it) and its row is deleted with the next flush.
    pub fn end(&self, request_id: &str, attempt: u64) -> Option<Arc<Hold>> {
        if self.is_empty() {
            return None;
        }
        let key = (request_id.to_owned(), attempt);
        let mut book = self.book();
        let hold = self.remove(&mut book, &key)?;
        book.ended.push(Arc::clone(&hold));
        Some(hold)
    }

    /// Removes a live hold and frees its capacity.
    fn remove(&self, book: &mut Book, key: &HoldKey) -> Option<Arc<Hold>> {
        let hold = book.live.remove(key)?;
        book.due.remove(&(hold.expires_at, hold.seq));
        self.count.store(book.live.len(), Ordering::Release);
        for held in &hold.counters {
            if let Some(counter) = &held.counter {
                counter.hold(-held.amount);
            }
        }
        Some(hold)
    }

    /// Ends every hold whose TTL is over at `now`; the holds that ended.
    pub fn expire(&self, now: Micros) -> Vec<Arc<Hold>> {
        let mut book = self.book();
        let mut expired = Vec::new();
        while let Some(entry) = book.due.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let key = entry.remove();
            if let Some(hold) = self.remove(&mut book, &key) {
                book.ended.push(Arc::clone(&hold));
                expired.push(hold);
            }
        }
        expired
    }

    /// What the next flush writes: holds placed and holds ended since the last one.
    pub fn take_changes(&self) -> HoldChanges {
        let mut book = self.book();
        HoldChanges {
            placed: std::mem::take(&mut book.placed),
            ended: std::mem::take(&mut book.ended),
        }
    }

    /// The flush of `changes` did not happen: they go with the next one.
    pub fn restore(&self, changes: HoldChanges) {
        let mut book = self.book();
        let HoldChanges { placed, ended } = changes;
        let later_placed = std::mem::replace(&mut book.placed, placed);
        book.placed.extend(later_placed);
        let later_ended = std::mem::replace(&mut book.ended, ended);
        book.ended.extend(later_ended);
    }

    /// Takes in what the database has (the read-back, or the start): the holds of other
    /// processes, which are counted from now on (those gone from it stop being counted), and
    /// the notes that holds of this process ended elsewhere (settled or released through
    /// another replica), whose capacity is freed. Holds whose TTL is over at `now` are left
    /// out. `resolve` finds this process's counter of a limit.
    pub fn absorb(
        &self,
        stored: Vec<Hold>,
        ended_elsewhere: &[HoldKey],
        now: Micros,
        resolve: impl Fn(LimitKind, Uuid) -> Option<Arc<Counter>>,
    ) {
        let mut book = self.book();
        let pending_end: HashSet<HoldKey> = book.ended.iter().map(|h| h.key()).collect();
        let mut in_db: HashSet<HoldKey> = HashSet::with_capacity(stored.len());
        for mut hold in stored {
            let key = hold.key();
            if hold.writer == self.me {
                continue;
            }
            in_db.insert(key.clone());
            if hold.expires_at <= now || pending_end.contains(&key) || book.live.contains_key(&key)
            {
                continue;
            }
            for held in &mut hold.counters {
                held.counter = resolve(held.kind, held.limit);
                if let Some(counter) = &held.counter {
                    counter.hold(held.amount);
                }
            }
            book.seq += 1;
            hold.seq = book.seq;
            book.due.insert((hold.expires_at, hold.seq), key.clone());
            book.live.insert(key, Arc::new(hold));
        }
        let mut gone: Vec<HoldKey> = book
            .live
            .iter()
            .filter(|(key, hold)| hold.writer != self.me && !in_db.contains(*key))
            .map(|(key, _)| key.clone())
            .collect();
        gone.extend(ended_elsewhere.iter().cloned());
        for key in gone {
            self.remove(&mut book, &key);
        }
        self.count.store(book.live.len(), Ordering::Release);
    }
}
