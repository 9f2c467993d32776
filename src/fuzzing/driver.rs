//! The session target's driver: runs a session the way relay.rs and pump.rs do, against the
//! test fake PostgreSQL, with server replies the input tampers with.

use std::collections::{HashMap, VecDeque};

use bytes::BytesMut;

use crate::protocol::backend::PgError;
use crate::protocol::frame::{peek_header, Frame};
use crate::protocol::Front;
use crate::route::Target as RouteTarget;
use crate::session::harness::{self, Tally, World};
use crate::session::{Ctx, Plan, Session};

/// How the next server reply is tampered with before the session reads it.
#[derive(Clone, Debug)]
pub(super) enum Fault {
    None,
    /// Replaced by these bytes.
    Replace(Vec<u8>),
    /// These bytes appended.
    Append(Vec<u8>),
    /// Only the first n bytes arrive (the server then hangs).
    Truncate(usize),
    /// Arrives in two reads split at n.
    Split(usize),
}

/// Drives one session the way relay.rs and pump.rs do, against fake servers whose replies the
/// input may tamper with.
pub(super) struct Driver {
    pub(super) world: World,
    pub(super) s: Session,
    pub(super) tally: Tally,
    pub(super) replies: BytesMut,
    pub(super) pending: VecDeque<Frame>,
    pub(super) fault: Fault,
    pub(super) place_fails: bool,
    pub(super) tampered: bool,
    pub(super) gone: bool,
}

impl Driver {
    /// Runs until nothing more can happen, as the relay would.
    pub(super) fn settle(&mut self) {
        for _ in 0..10_000 {
            let progressed = if self.gone {
                false
            } else if self.s.attached().is_none() {
                self.plan_next()
            } else {
                self.round_trip()
            };
            if !progressed {
                return;
            }
        }
        panic!("the session did not settle");
    }

    fn plan_next(&mut self) -> bool {
        let Some(first) = self.pending.pop_front() else {
            return false;
        };
        match first.front() {
            Front::Terminate => {
                self.gone = true;
                return false;
            }
            Front::Sync => {
                self.s.lone_sync(&mut self.replies);
                return true;
            }
            Front::Flush => return true,
            _ if self.s.skipping() => return true,
            _ => {}
        }
        let Some(unit) = harness::take_unit(first, &mut self.pending) else {
            self.gone = true;
            return false;
        };
        let mut ctx = Ctx {
            cache: &self.world.cache,
            registry: &self.world.registry,
            observer: &mut self.tally,
        };
        let plan = harness::plan_detached(&mut self.s, &unit, &mut ctx, &mut self.replies);
        let Plan::Attach { target, .. } = plan else {
            return true;
        };
        if std::mem::take(&mut self.place_fails) {
            let synced = matches!(
                unit.last().map(Frame::front),
                Some(Front::Query | Front::FunctionCall | Front::Sync)
            );
            let e = PgError::error("08006", "no server connection (fuzz)");
            self.s.refused_locally(e, synced, &mut self.replies);
            return true;
        }
        let (_, stmts) = self.world.servers.entry(target).or_default();
        let out = harness::send_unit(&mut self.s, plan, &unit, &mut ctx, stmts);
        self.exchange(target, out);
        true
    }

    fn round_trip(&mut self) -> bool {
        let Some(target) = self.s.attached() else {
            return false;
        };
        let (_, stmts) = self.world.servers.entry(target).or_default();
        let mut out = BytesMut::new();
        let mut ctx = Ctx {
            cache: &self.world.cache,
            registry: &self.world.registry,
            observer: &mut self.tally,
        };
        while self.s.may_forward(self.pending.front().map(|f| f.tag)) {
            let Some(f) = self.pending.pop_front() else {
                break;
            };
            if f.front() == Front::Terminate {
                // The client left with a server attached: the pump ends and detaches.
                self.s.detach();
                self.gone = true;
                return false;
            }
            self.s.client_frame_copied(&f, &mut ctx, stmts, &mut out);
        }
        if out.is_empty() {
            if self.s.may_release(false) {
                self.s.detach();
                return true;
            }
            return false;
        }
        self.exchange(target, out);
        true
    }

    fn exchange(&mut self, target: RouteTarget, mut out: BytesMut) {
        let (pg, stmts) = self.world.servers.entry(target).or_default();
        let mut replies = pg.feed(&mut out);
        let mut reads = vec![];
        match std::mem::replace(&mut self.fault, Fault::None) {
            Fault::None => reads.push(replies),
            Fault::Replace(b) => reads.push(BytesMut::from(&b[..])),
            Fault::Append(b) => {
                replies.extend_from_slice(&b);
                reads.push(replies);
            }
            Fault::Truncate(n) => {
                replies.truncate(n);
                reads.push(replies);
            }
            Fault::Split(n) => {
                let rest = replies.split_off(n.min(replies.len()));
                reads.push(replies);
                reads.push(rest);
            }
        }
        let mut input = BytesMut::new();
        let mut params = HashMap::new();
        for read in reads {
            input.extend_from_slice(&read);
            if let Err(e) = self
                .s
                .scan(&mut input, &mut self.replies, stmts, &mut params)
            {
                // pump.rs: the server broke the protocol; it is dropped and the client told.
                self.world.servers.remove(&target);
                self.s.server_lost(&e.to_string(), &mut self.replies);
                return;
            }
        }
        if self.s.may_release(false) {
            self.s.detach();
        }
    }

    /// What the client was sent must be whole, well-framed messages. Walked by header only: a
    /// large server message is streamed, so its tail may still be on the way.
    pub(super) fn check_replies(&mut self) {
        let mut rest = &self.replies[..];
        loop {
            match peek_header(rest, usize::MAX) {
                Ok(Some((_, total))) if total <= rest.len() => rest = &rest[total..],
                Ok(_) => break,
                Err(e) => panic!("the client was sent a malformed message: {e}"),
            }
        }
        if !self.tampered {
            assert!(rest.is_empty(), "the client was sent a partial message");
        }
        self.replies.clear();
    }
}
