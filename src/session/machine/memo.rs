//! Session step, both sides: the batch's memo of classifications. Planning and forwarding a
//! batch look each of its SQL texts up in the shared cache once; the memo knows a text by
//! where it sits in its message, which holds only while the batch's messages live.

use std::sync::Arc;

use super::Session;
use crate::classify::{Classification, ClassifyCache};

/// Texts remembered per batch; a longer pipeline looks the rest up again.
const MEMO: usize = 16;

/// Where `sql` sits and how long it is: what the memo and a planned decision know a text by,
/// valid only while its message lives.
pub(super) fn text_key(sql: &str) -> (usize, usize) {
    (sql.as_ptr() as usize, sql.len())
}

impl Session {
    /// The classification of `sql`, a text borrowed from a message of the current batch.
    pub(super) fn class_of(&mut self, cache: &ClassifyCache, sql: &str) -> Arc<Classification> {
        if !self.memo_open {
            // A message read after its batch: an old address may hold another text now.
            return cache.get(sql);
        }
        let key = text_key(sql);
        if let Some((_, _, c)) = self.memo.iter().find(|(p, l, _)| (*p, *l) == key) {
            return c.clone();
        }
        let c = cache.get(sql);
        if self.memo.len() < MEMO {
            self.memo.push((key.0, key.1, c.clone()));
        }
        c
    }

    /// Takes the classification of `sql`, a text of the batch `plan` gets next, made
    /// elsewhere (off the serving thread), so planning does not parse it again.
    pub fn remember(&mut self, sql: &str, c: Arc<Classification>) {
        let seeded = usize::from(self.seeded);
        if seeded < MEMO {
            // Entries past the seeds are an earlier batch's.
            self.memo.truncate(seeded);
            let (at, len) = text_key(sql);
            self.memo.push((at, len, c));
            self.seeded += 1;
        }
    }

    /// The batch's messages are gone (sent or answered): their addresses mean nothing now,
    /// and the client's read buffer may put other texts there.
    pub fn batch_done(&mut self) {
        self.memo.clear();
        self.memo_open = false;
        self.planned = None;
    }
}
