//! Giving a place back. A lease's release (or its drop: a cancelled request) keeps the place
//! for this replica's next request on the session when it may (`parked`), else hands it to the
//! next waiter in Redis with the use time, a 202 and the jar when it changed; a queued ticket
//! whose wait ends is taken off the queue. A drop cannot wait, so both can run on a task of
//! their own, with what they need detached from the store ([`Releaser`]).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::oneshot;

use super::super::store::Release;
use super::guards::Holdings;
use super::keys::Keys;
use super::parked::{Keep, Parked, Place};
use super::recent::Recent;
use super::{lock, RedisStore};
use crate::fleet::seal::Sealer;
use crate::fleet::{Fleet, RedisHandle};

/// What a lease's release needs, detached from the store (a lease may be dropped anywhere):
/// built once per store, cloned for each lease.
#[derive(Clone)]
pub(super) struct Releaser(Arc<Parts>);

pub(super) struct Parts {
    /// The store's memory of used sessions, which follows the jar as it is written back.
    recent: Recent,
    redis: RedisHandle,
    fleet: Arc<Fleet>,
    script: redis::Script,
    refresh: redis::Script,
    cancel: redis::Script,
    sealer: Arc<Sealer>,
    holdings: Holdings,
    parked: Parked,
    epoch: Arc<Mutex<String>>,
    keys: Keys,
    max: u32,
    lease_ms: u64,
}

impl std::ops::Deref for Releaser {
    type Target = Parts;

    fn deref(&self) -> &Parts {
        &self.0
    }
}

impl Parts {
    /// The releaser of `store`'s leases.
    pub(super) fn of(store: &RedisStore) -> Releaser {
        Releaser(Arc::new(Parts {
            recent: store.recent.clone(),
            redis: store.redis.clone(),
            fleet: store.fleet.clone(),
            script: store.scripts.release.clone(),
            refresh: store.scripts.refresh.clone(),
            cancel: store.scripts.cancel.clone(),
            sealer: store.sealer.clone(),
            holdings: store.holdings.clone(),
            parked: store.parked.clone(),
            epoch: store.epoch.clone(),
            keys: store.keys.clone(),
            max: store.max_inflight,
            lease_ms: store.lease_ms(),
        }))
    }
}

impl RedisStore {
    pub(super) fn releaser(&self) -> &Releaser {
        self.releaser.get_or_init(|| Parts::of(self))
    }
}

impl Releaser {
    /// Ends a request's hold on the place of slot `s`: keeps the place for this replica's next
    /// request on the session when it may (`parked`), else gives it back.
    pub(super) fn release(
        self,
        s: String,
        id: u64,
        ticket: String,
        how: Release,
        keep: Option<Keep>,
    ) {
        let Some(mut keep) = keep else {
            return self.give_back(s, id, ticket, how, 0);
        };
        // A jar an earlier request on the kept place left unwritten goes with this one.
        let jar = how.jar.or_else(|| keep.jar.take());
        if jar.is_some() {
            keep.dirty_since.get_or_insert_with(Instant::now);
        }
        if how.op || !self.keeps(&s, id, &ticket, &keep) {
            return self.give_back(s, id, ticket, Release { op: how.op, jar }, 0);
        }
        if let Some(jar) = &jar {
            // This replica's next request on the session, and a repair, use it meanwhile.
            self.recent.hold_jar(&s, id, jar);
        }
        keep.jar = jar;
        match keep.wanted.since() {
            // Wanted elsewhere: only this replica's requests that waited from before go first.
            Some(since) => {
                let place = Place::new(id, ticket, keep);
                if let Some(place) = self.parked.hand(&s, place, Some(since)) {
                    self.give_back_kept(s, place);
                }
            }
            // Back when a request of this replica takes it, or by the sweeper (`parked`).
            None => self.parked.put(&s, id, ticket, keep),
        }
    }

    /// True when the place may stay with this replica: granted under the store's current
    /// state and still held, and the session is one this replica knows as logged in. (A place
    /// granted long ago stays too: the request that takes it renews it first.)
    fn keeps(&self, s: &str, id: u64, ticket: &str, keep: &Keep) -> bool {
        self.parked.open()
            && self.parked.current(keep, &lock(&self.epoch))
            && self.holdings.holds(ticket)
            && self.recent.active(s, id)
    }

    /// Gives the kept place of slot `s` back, with the jar it left unwritten.
    pub(super) async fn give_back_place(&self, s: &str, place: Place) {
        self.parked.let_go(s);
        let (id, ticket, how, idle) = place.back();
        self.give_back_now(s, id, ticket, how, idle).await;
    }

    /// Gives the kept place of slot `s` back on its own task, with the jar it left unwritten.
    pub(super) fn give_back_kept(self, s: String, place: Place) {
        let (id, ticket, how, idle) = place.back();
        self.give_back(s, id, ticket, how, idle);
    }

    /// Renews the lease of a kept place this replica goes on using, records the use and writes
    /// the jar the place left unwritten, while the place is still its ticket's and unexpired.
    /// On success the place counts as granted anew and carries no unwritten jar; on failure
    /// (the place is gone, or Redis did not answer) the caller gives it back.
    pub(super) async fn refresh(&self, s: &str, place: &mut Place) -> bool {
        // Redis extends the lease from its own now, which is later than this.
        let sent = Instant::now();
        let rec = self.keys.record(s);
        let sealed = place
            .keep
            .jar
            .as_ref()
            .map(|jar| self.sealer.seal(&rec, &jar.to_text()));
        let (script, keys, ticket, id) = (&self.refresh, &self.keys, &place.ticket, place.id);
        let lease_ms = self.lease_ms;
        let version = self
            .redis
            .run("refresh", |mut c| async move {
                script
                    .key(&rec)
                    .arg(&keys.prefix)
                    .arg(id)
                    .arg(ticket)
                    .arg(lease_ms)
                    .arg(if sealed.is_some() { "1" } else { "0" })
                    .arg(sealed.unwrap_or_default())
                    .invoke_async::<i64>(&mut c)
                    .await
            })
            .await;
        let Ok(version @ 0..) = version else {
            return false;
        };
        if let (Ok(v @ 1..), Some(jar)) = (u64::try_from(version), place.keep.jar.take()) {
            self.recent.wrote_jar(s, id, v, jar);
        }
        place.keep.dirty_since = None;
        place.keep.granted = sent;
        true
    }

    /// Gives the place back on its own task (a drop cannot wait).
    pub(super) fn give_back(self, s: String, id: u64, ticket: String, how: Release, idle_ms: u64) {
        // This replica's requests waiting behind the place ask Redis from now on.
        self.parked.let_go(&s);
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            self.holdings.drop_ticket(&ticket);
            self.fleet.unwatch(&ticket);
            return;
        };
        handle.spawn(async move { self.give_back_now(&s, id, ticket, how, idle_ms).await });
    }

    /// Gives the place of slot `s` back, with the use time (`idle_ms` ago: a kept place was
    /// last used when it was kept), a 202 and the jar when it changed; the next waiter gets it.
    pub(super) async fn give_back_now(
        &self,
        s: &str,
        id: u64,
        ticket: String,
        how: Release,
        idle_ms: u64,
    ) {
        self.holdings.drop_ticket(&ticket);
        self.fleet.unwatch(&ticket);
        let rec = self.keys.record(s);
        let jar = how
            .jar
            .as_ref()
            .map(|j| self.sealer.seal(&rec, &j.to_text()));
        let plain = how.jar;
        let (script, keys) = (&self.script, &self.keys);
        let (max, lease_ms) = (self.max, self.lease_ms);
        let me = self.fleet.id();
        let reply = self
            .redis
            .run("release", |mut c| async move {
                script
                    .key(&rec)
                    .arg(&keys.prefix)
                    .arg(&keys.global)
                    .arg(id)
                    .arg(&ticket)
                    .arg(if how.op { "1" } else { "0" })
                    .arg(max)
                    .arg(lease_ms)
                    .arg(if jar.is_some() { "1" } else { "0" })
                    .arg(jar.unwrap_or_default())
                    .arg(me)
                    .arg(idle_ms)
                    .invoke_async::<Vec<String>>(&mut c)
                    .await
            })
            .await;
        let Ok(reply) = reply else { return };
        let number = |i: usize| reply.get(i).and_then(|v| v.parse::<u64>().ok());
        if let (Some(v @ 1..), Some(jar)) = (number(0), plain) {
            self.recent.wrote_jar(s, id, v, jar);
        }
        // This replica's own waiters that got the place: woken here, once the memory of the
        // jar is up to date (they take the record from it if its jar is that version).
        if let Some(jar_version) = number(1) {
            self.fleet
                .deliver_handed(reply.get(2..).unwrap_or_default(), jar_version);
        }
    }
}

/// Takes a ticket off its session's queue (and hands on a place granted to it meanwhile).
pub(super) async fn cancel(r: &Releaser, rec: &str, ticket: &str) {
    let _ = r
        .redis
        .run("cancel", |mut c| async move {
            r.cancel
                .key(rec)
                .arg(&r.keys.prefix)
                .arg(&r.keys.global)
                .arg(ticket)
                .arg(r.max)
                .arg(r.lease_ms)
                .invoke_async::<i64>(&mut c)
                .await
        })
        .await;
}

/// A place on its way to a request of this replica (being renewed, or handed through the local
/// queue): given back if the request goes away first, so that no place stays held, and
/// renewed, for nobody.
pub(super) struct Owed<'a> {
    releaser: &'a Releaser,
    s: &'a str,
    place: Option<Place>,
    turn: Option<oneshot::Receiver<Place>>,
}

impl<'a> Owed<'a> {
    /// A place this request holds until it takes it out again.
    pub(super) fn place(releaser: &'a Releaser, s: &'a str, place: Place) -> Owed<'a> {
        Owed {
            releaser,
            s,
            place: Some(place),
            turn: None,
        }
    }

    /// The place a request of this replica hands on through `turn`.
    pub(super) fn turn(
        releaser: &'a Releaser,
        s: &'a str,
        turn: oneshot::Receiver<Place>,
    ) -> Owed<'a> {
        Owed {
            releaser,
            s,
            place: None,
            turn: Some(turn),
        }
    }

    /// Waits for the place handed through the turn; false when it went back to Redis instead.
    pub(super) async fn handed(&mut self) -> bool {
        if let Some(turn) = self.turn.as_mut() {
            self.place = turn.await.ok();
            self.turn = None;
        }
        self.place.is_some()
    }

    /// The held place.
    pub(super) fn peek(&self) -> Option<&Place> {
        self.place.as_ref()
    }

    /// Renews the held place in Redis ([`Releaser::refresh`]); false when it is gone or Redis
    /// did not answer.
    pub(super) async fn refresh(&mut self) -> bool {
        match self.place.as_mut() {
            Some(place) => self.releaser.refresh(self.s, place).await,
            None => false,
        }
    }

    /// Takes the place out: the request holds it now.
    pub(super) fn take(mut self) -> Option<Place> {
        self.place.take()
    }
}

impl Drop for Owed<'_> {
    fn drop(&mut self) {
        let handed = self.turn.take().and_then(|mut turn| {
            // No place can come through any more; one that came already is taken here.
            turn.close();
            turn.try_recv().ok()
        });
        for place in [self.place.take(), handed].into_iter().flatten() {
            self.releaser
                .clone()
                .give_back_kept(self.s.to_owned(), place);
        }
    }
}
