//! Pipeline step 3 (client → framing → classify → **route** → pool → server): the violation
//! series a fresh proxy exports at 0, so dashboards and alert expressions see 0 rather than "no
//! data" before the first violation. Derived from the dictionary's schemas and the schema rules.

use crate::classify::{Dictionary, SchemaRules};

use super::schemas::SchemaMask;
use super::{Mode, Target, ViolationKind};

/// One series: the violation kind, the target label where the counter has one, and the
/// `gitlab_schemas` label as the session records it (sorted, comma-joined).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Series {
    pub kind: ViolationKind,
    pub target: Option<Target>,
    pub schemas: String,
}

/// Every (kind, target, schemas) a violation can be counted under for the dictionary's own
/// schemas: the pairs the rules forbid in one statement (cross-join), the main/ci pairs of one
/// transaction, and each schema on the other database's targets.
pub fn known_series(dictionary: &Dictionary, rules: &SchemaRules) -> Vec<Series> {
    let schemas = dictionary.schemas();
    let mut out = Vec::new();
    for (i, a) in schemas.iter().enumerate() {
        for b in &schemas[i + 1..] {
            let pair = [a.clone(), b.clone()];
            let label = format!("{a},{b}");
            if !rules.joins_allowed(&pair) {
                out.push(series(ViolationKind::CrossJoin, None, &label));
            }
            if (SchemaMask::of(a) | SchemaMask::of(b)).spans_both() {
                out.push(series(
                    ViolationKind::CrossDatabaseModification,
                    None,
                    &label,
                ));
            }
        }
    }
    for schema in &schemas {
        let group = SchemaMask::of(schema).group();
        for target in Target::ALL {
            if group.is_some_and(|g| g != target.group()) {
                let label = schema.to_string();
                out.push(series(ViolationKind::WrongSchema, Some(target), &label));
                if !target.is_replica() {
                    out.push(series(
                        ViolationKind::LockedTableWrite,
                        Some(target),
                        &label,
                    ));
                }
            }
        }
    }
    out
}

fn series(kind: ViolationKind, target: Option<Target>, schemas: &str) -> Series {
    Series {
        kind,
        target,
        schemas: schemas.to_string(),
    }
}

/// Both modes, for the `mode` label of shadow violations.
pub const MODES: [Mode; 2] = [Mode::Observe, Mode::Enforce];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_2022_dictionary_and_rules_give_the_main_ci_series() {
        let got = known_series(&Dictionary::gitlab_default(), &SchemaRules::gitlab_2022());
        let has = |kind, target, schemas: &str| {
            got.contains(&Series {
                kind,
                target,
                schemas: schemas.into(),
            })
        };
        assert!(
            has(ViolationKind::CrossJoin, None, "gitlab_main,gitlab_ci")
                || has(ViolationKind::CrossJoin, None, "gitlab_ci,gitlab_main")
        );
        assert!(has(
            ViolationKind::WrongSchema,
            Some(Target::MainReplica),
            "gitlab_ci"
        ));
        assert!(has(
            ViolationKind::WrongSchema,
            Some(Target::CiReplica),
            "gitlab_main"
        ));
        assert!(has(
            ViolationKind::LockedTableWrite,
            Some(Target::Ci),
            "gitlab_main"
        ));
        assert!(!has(
            ViolationKind::LockedTableWrite,
            Some(Target::CiReplica),
            "gitlab_main"
        ));
        assert!(
            !got.iter().any(|s| s.schemas.contains("gitlab_shared")),
            "{got:?}"
        );
        // main+ci is the only forbidden pair of the 2022 rules.
        assert_eq!(
            got.iter()
                .filter(|s| s.kind == ViolationKind::CrossJoin)
                .count(),
            1
        );
    }
}
