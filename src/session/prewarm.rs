//! Session step (client → framing → **session** → classify → …): a statement too large to
//! parse in passing is classified on tokio's blocking pool before the session machine plans
//! it. Parsing runs on the thread that serves the client; a 1 MiB batch INSERT takes about
//! 250 ms to parse here, and with `workers = 1` every other client would wait for it.

use std::sync::Arc;

use arc_swap::ArcSwap;

use super::machine::Session;
use crate::classify::{Classification, ClassifyCache};
use crate::protocol::frame::Frame;
use crate::protocol::frontend::{parse_view, query_sql};
use crate::protocol::Front;

/// SQL of more bytes than this is parsed off the serving thread (a cache hit is cheap, but the
/// key is only known after a pass over the text, which is why size alone decides).
pub const OFF_THREAD_BYTES: usize = 64 * 1024;

/// Whether `unit` holds a statement to classify off the serving thread. Looks at message sizes
/// only, so the common request costs a length comparison per message.
pub fn needed(unit: &[Frame]) -> bool {
    unit.iter().any(big)
}

fn big(f: &Frame) -> bool {
    f.raw.len() > OFF_THREAD_BYTES && matches!(f.front(), Front::Query | Front::Parse)
}

/// Classifies every large statement of `unit` on the blocking pool and hands each
/// classification to the session for the plan that follows. Multi-statement strings are split
/// there too, into the cache the plan reads. If the blocking pool fails, the plan parses inline.
pub async fn prewarm(unit: &[Frame], cache: &ArcSwap<ClassifyCache>, session: &mut Session) {
    for f in unit.iter().filter(|f| big(f)) {
        let (frame, cache) = (f.clone(), cache.load_full());
        let done = tokio::task::spawn_blocking(move || classify(&frame, &cache)).await;
        // The clone shares the message's bytes, so the text sits where the plan will read it.
        if let (Ok(Some(c)), Some(sql)) = (done, sql_of(f)) {
            session.remember(sql, c);
        }
    }
}

fn sql_of(f: &Frame) -> Option<&str> {
    match f.front() {
        Front::Query => query_sql(f),
        _ => parse_view(f).map(|p| p.sql),
    }
}

fn classify(f: &Frame, cache: &ClassifyCache) -> Option<Arc<Classification>> {
    let sql = sql_of(f)?;
    let whole = cache.get(sql);
    if f.front() == Front::Query {
        // A multi-statement string is planned statement by statement too.
        let _ = cache.each(sql, &whole);
    }
    Some(whole)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::Classifier;
    use crate::session::machine::harness::msg;

    fn batch_insert(rows: usize) -> String {
        let values: Vec<String> = (0..rows).map(|i| format!("({i}, 'b-{i}')")).collect();
        format!(
            "INSERT INTO ci_builds (id, name) VALUES {}",
            values.join(", ")
        )
    }

    #[test]
    fn only_large_statements_go_off_thread() {
        let small = msg::q("SELECT 1 FROM projects");
        let large = msg::q(&batch_insert(5_000));
        assert!(large.raw.len() > OFF_THREAD_BYTES);
        assert!(!needed(std::slice::from_ref(&small)));
        assert!(needed(&[small, large]));
        let sync = msg::frame(b'S', &[]);
        assert!(!needed(&[sync]));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn large_statements_are_classified_before_the_plan() {
        let cache = ArcSwap::from_pointee(ClassifyCache::new(Classifier::gitlab_default(), 100));
        let insert = batch_insert(5_000);
        let two = format!("{insert}; SELECT 1 FROM projects");
        let unit = [
            msg::q("SELECT 1 FROM namespaces"),
            msg::parse("", &insert),
            msg::q(&two),
        ];
        let mut done = Vec::new();
        for f in unit.iter().filter(|f| big(f)) {
            done.push(classify(&f.clone(), &cache.load()).map(|c| c.schemas_label()));
        }
        let ci = Some("gitlab_ci".to_string());
        assert_eq!(done, [ci, Some("gitlab_ci,gitlab_main".to_string())]);
        // The split of the two-statement string waits in the cache for the plan.
        let c = cache.load();
        let each = c.each(&two, &c.get(&two)).expect("two statements");
        let labels: Vec<String> = each.iter().map(|c| c.schemas_label()).collect();
        assert_eq!(labels, ["gitlab_ci", "gitlab_main"]);
    }

    /// The plan takes the classification `prewarm` hands over instead of parsing the text:
    /// told that a large ci INSERT is a main read, it places it on the main replica.
    #[test]
    fn the_plan_uses_what_was_remembered() {
        use crate::route::Target;
        use crate::session::machine::harness::World;
        use crate::session::machine::{Ctx, Plan};
        let w = World::new(1, "observe");
        let mut c = w.client(None);
        let unit = [msg::q(&batch_insert(5_000))];
        let read = w.cache.get("SELECT 1 FROM projects");
        c.s.remember(sql_of(&unit[0]).expect("a query"), read);
        let mut ctx = Ctx {
            cache: &w.cache,
            registry: &w.registry,
            observer: &mut c.tally,
        };
        let plan = c.s.plan(&unit, &mut ctx, &mut c.replies);
        assert!(matches!(
            plan,
            Plan::Attach {
                target: Target::MainReplica,
                ..
            }
        ));
        assert_eq!(
            w.cache.len(),
            1,
            "nothing parsed: only the remembered read is cached"
        );
        // Remembered for one plan only: the next one classifies the text itself.
        let plan = c.s.plan(&unit, &mut ctx, &mut c.replies);
        assert!(matches!(
            plan,
            Plan::Attach {
                target: Target::Main | Target::Ci,
                ..
            }
        ));
    }
}
