//! Short fuzz runs on stable, beside the cargo-fuzz crate in `fuzz/`: every target in
//! `pgdecomp::fuzzing` gets its saved regressions (`fuzz/regressions/<target>/`), its seeds,
//! mutations of the seeds and seeded random bytes, within a few seconds each.

use std::path::Path;
use std::time::{Duration, Instant};

use pgdecomp::fuzzing::{seeds, TARGETS};

/// Wall time per target for the random part.
const BUDGET: Duration = Duration::from_secs(3);

/// xorshift64*: reproducible inputs without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..1 + rng.below(8) {
        let at = rng.below(v.len() + 1);
        match rng.below(5) {
            0 if at < v.len() => v[at] = rng.next() as u8,
            1 if at < v.len() => v[at] ^= 1 << rng.below(8),
            2 => v.insert(at, rng.next() as u8),
            3 if at < v.len() => {
                v.remove(at);
            }
            _ => v.truncate(at),
        }
    }
    v
}

fn regressions(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/regressions")
        .join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return vec![];
    };
    let mut files: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    files.sort();
    files
        .into_iter()
        .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
        .collect()
}

fn run(name: &str) {
    let target = TARGETS.iter().find(|(n, _)| *n == name).unwrap().1;
    for (path, input) in regressions(name) {
        eprintln!("{name}: regression {path}");
        target(&input);
    }
    let seeds = seeds(name);
    for s in &seeds {
        target(s);
    }
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ name.len() as u64);
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < BUDGET {
        let input = if seeds.is_empty() || rng.below(4) == 0 {
            let len = rng.below(512);
            (0..len).map(|_| rng.next() as u8).collect()
        } else {
            mutate(&seeds[rng.below(seeds.len())], &mut rng)
        };
        target(&input);
        n += 1;
    }
    eprintln!("{name}: {n} random inputs");
}

#[test]
fn frame() {
    run("frame");
}

#[test]
fn startup() {
    run("startup");
}

#[test]
fn scram() {
    run("scram");
}

#[test]
fn classify() {
    run("classify");
}

#[test]
fn config() {
    run("config");
}

#[test]
fn session() {
    run("session");
}

/// Every target has a test above.
#[test]
fn all_targets_covered() {
    let names: Vec<&str> = TARGETS.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names,
        ["frame", "startup", "scram", "classify", "config", "session"]
    );
}

/// `PGDECOMP_FUZZ_SEEDS=fuzz/seeds cargo test --features fuzzing --test fuzz_smoke` writes the
/// seeds as starting corpora for cargo-fuzz.
#[test]
fn write_seeds() {
    let Ok(dir) = std::env::var("PGDECOMP_FUZZ_SEEDS") else {
        return;
    };
    for (name, _) in TARGETS {
        let d = Path::new(&dir).join(name);
        std::fs::create_dir_all(&d).unwrap();
        for (i, s) in seeds(name).iter().enumerate() {
            std::fs::write(d.join(format!("seed-{i:03}")), s).unwrap();
        }
    }
}
