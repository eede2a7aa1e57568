//! Status conditions as the operator writes them: one per type, the transition time
//! kept while the status stays the same.

use crate::crd::common::{Condition, ConditionStatus};

/// A condition set now from `generation`.
pub fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: if status {
            ConditionStatus::True
        } else {
            ConditionStatus::False
        },
        observed_generation: generation,
        last_transition_time: now(),
        reason: reason.to_owned(),
        message: message.into(),
    }
}

/// `new`, each keeping the transition time of `old`'s condition of its type when the
/// status is unchanged (a reason or message change is not a transition).
pub fn merge_conditions(old: &[Condition], new: Vec<Condition>) -> Vec<Condition> {
    new.into_iter()
        .map(|mut c| {
            if let Some(prev) = old.iter().find(|o| o.type_ == c.type_) {
                if prev.status == c.status {
                    c.last_transition_time = prev.last_transition_time.clone();
                }
            }
            c
        })
        .collect()
}

/// Now, RFC 3339 to the second (`metav1.Time`).
pub(crate) fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_transition_time_moves_only_when_the_status_does() {
        let mut old = condition("Ready", false, "Progressing", "1 of 3", Some(1));
        old.last_transition_time = "2026-01-01T00:00:00Z".into();
        let same = merge_conditions(
            std::slice::from_ref(&old),
            vec![condition("Ready", false, "Progressing", "2 of 3", Some(2))],
        );
        assert_eq!(same[0].last_transition_time, "2026-01-01T00:00:00Z");
        assert_eq!(same[0].message, "2 of 3");
        let flipped = merge_conditions(
            std::slice::from_ref(&old),
            vec![condition("Ready", true, "RolledOut", "3 of 3", Some(2))],
        );
        assert_ne!(flipped[0].last_transition_time, "2026-01-01T00:00:00Z");
        assert!(flipped[0].last_transition_time.ends_with('Z'));
    }
}
