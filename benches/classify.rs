//! Benchmarks for the classify step (client → framing → **classify** → route → pool → server):
//! a miss (parse + walk + lookup) and a cache hit, per corpus statement and for a typical
//! three-table statement, plus the literal-normalising cache key that decides whether
//! simple-protocol statements differing only in literals share an entry.

#[path = "../tests/common/corpus.rs"]
mod corpus;

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use pgdecomp::classify::{cache_key, Classification, Classifier, ClassifyCache};

const THREE_TABLES: &str = r#"SELECT "ci_builds".* FROM "ci_builds" INNER JOIN "ci_stages" ON "ci_stages"."id" = "ci_builds"."stage_id" INNER JOIN "ci_pipelines" ON "ci_pipelines"."id" = "ci_stages"."pipeline_id" WHERE "ci_pipelines"."project_id" = 278964 AND "ci_builds"."status" = 'running' ORDER BY "ci_builds"."id" DESC LIMIT 20 /*application:sidekiq,endpoint_id:Ci::BuildFinishedWorker,db_config_name:ci*/"#;

/// pgbench -M simple's TPC-B-like statements, with the literals a run would inline.
fn pgbench_simple(i: u64) -> [String; 5] {
    let (aid, bid, tid, delta) = (
        i * 7919 % 100_000 + 1,
        i % 10 + 1,
        i % 100 + 1,
        (i % 10_000) as i64 - 5_000,
    );
    [
        format!("UPDATE pgbench_accounts SET abalance = abalance + {delta} WHERE aid = {aid};"),
        format!("SELECT abalance FROM pgbench_accounts WHERE aid = {aid};"),
        format!("UPDATE pgbench_tellers SET tbalance = tbalance + {delta} WHERE tid = {tid};"),
        format!("UPDATE pgbench_branches SET bbalance = bbalance + {delta} WHERE bid = {bid};"),
        format!("INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ({tid}, {bid}, {aid}, {delta}, CURRENT_TIMESTAMP);"),
    ]
}

fn miss(c: &mut Criterion) {
    let classifier = Classifier::gitlab_default();
    let statements: Vec<String> = corpus::load().into_iter().map(|case| case.sql).collect();
    let mut group = c.benchmark_group("miss");
    group.bench_function("three_table", |b| {
        b.iter(|| classifier.classify(black_box(THREE_TABLES)))
    });
    // The parser alone, to see what the walk, lookups and verdict add on top.
    group.bench_function("three_table_sqlparser_only", |b| {
        let dialect = sqlparser::dialect::PostgreSqlDialect {};
        b.iter(|| sqlparser::parser::Parser::parse_sql(&dialect, black_box(THREE_TABLES)))
    });
    group.throughput(Throughput::Elements(statements.len() as u64));
    group.bench_function("corpus", |b| {
        b.iter(|| {
            for sql in &statements {
                black_box(classifier.classify(black_box(sql)));
            }
        })
    });
    group.finish();
}

fn hit(c: &mut Criterion) {
    let statements: Vec<String> = corpus::load().into_iter().map(|case| case.sql).collect();
    let cache = ClassifyCache::new(Classifier::gitlab_default(), 10_000);
    for sql in &statements {
        cache.get(sql);
    }
    cache.get(THREE_TABLES);
    let mut group = c.benchmark_group("hit");
    group.bench_function("three_table", |b| {
        b.iter(|| cache.get(black_box(THREE_TABLES)))
    });
    group.throughput(Throughput::Elements(statements.len() as u64));
    group.bench_function("corpus", |b| {
        b.iter(|| {
            for sql in &statements {
                black_box(cache.get(black_box(sql)));
            }
        })
    });
    group.finish();
}

/// Is literal normalisation worth it? Compares the key's cost with a raw-text cache, and the
/// literal-varying pgbench workload with and without it.
fn normalisation(c: &mut Criterion) {
    let classifier = Classifier::gitlab_default();
    let raw: quick_cache::sync::Cache<String, Arc<Classification>> =
        quick_cache::sync::Cache::new(10_000);
    raw.insert(
        THREE_TABLES.to_owned(),
        Arc::new(classifier.classify(THREE_TABLES)),
    );
    let normalised = ClassifyCache::new(classifier.clone(), 10_000);
    normalised.get(THREE_TABLES);

    let mut group = c.benchmark_group("normalisation");
    group.bench_function("cache_key/three_table", |b| {
        b.iter(|| cache_key(black_box(THREE_TABLES)))
    });
    group.bench_function("raw_key_hit/three_table", |b| {
        b.iter(|| raw.get(black_box(THREE_TABLES)))
    });
    group.bench_function("normalised_hit/three_table", |b| {
        b.iter(|| normalised.get(black_box(THREE_TABLES)))
    });

    let workload: Vec<String> = (0..2_000).flat_map(pgbench_simple).collect();
    group.throughput(Throughput::Elements(workload.len() as u64));
    group.bench_function("pgbench_simple/raw_key", |b| {
        b.iter_batched(
            || quick_cache::sync::Cache::<String, Arc<Classification>>::new(10_000),
            |cache| {
                for sql in &workload {
                    if cache.get(sql.as_str()).is_none() {
                        cache.insert(sql.clone(), Arc::new(classifier.classify(sql)));
                    }
                }
            },
            BatchSize::PerIteration,
        )
    });
    group.bench_function("pgbench_simple/normalised_key", |b| {
        b.iter_batched(
            || ClassifyCache::new(classifier.clone(), 10_000),
            |cache| {
                for sql in &workload {
                    black_box(cache.get(sql));
                }
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, miss, hit, normalisation);
criterion_main!(benches);
