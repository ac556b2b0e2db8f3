//! The subset of ServiceNow encoded queries the simulator understands:
//! `field=value`, `field!=value`, `fieldINa,b`, `fieldNOT INa,b`, `fieldSTARTSWITHx`,
//! `fieldLIKEx`, `fieldISEMPTY`, `fieldISNOTEMPTY`, `^` (AND), `^OR` (OR, binding tighter
//! than AND, as in ServiceNow), `ORDERBYfield`, `ORDERBYDESCfield`.
//!
//! Like a default ServiceNow instance, a condition on an unknown field or with an operator the
//! simulator does not know is silently dropped (it matches every record) — a query with a typo
//! returns everything, which clients must not mistake for a match.

use std::cmp::Ordering;

#[derive(Clone, Debug, PartialEq)]
enum Op {
    Eq(String),
    Ne(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    StartsWith(String),
    Like(String),
    IsEmpty,
    IsNotEmpty,
}

#[derive(Clone, Debug, PartialEq)]
struct Condition {
    field: String,
    op: Op,
}

impl Condition {
    fn matches(&self, value: &str) -> bool {
        match &self.op {
            Op::Eq(v) => value == v,
            Op::Ne(v) => value != v,
            Op::In(vs) => vs.iter().any(|v| v == value),
            Op::NotIn(vs) => !vs.iter().any(|v| v == value),
            Op::StartsWith(v) => value.to_lowercase().starts_with(&v.to_lowercase()),
            Op::Like(v) => value.to_lowercase().contains(&v.to_lowercase()),
            Op::IsEmpty => value.is_empty(),
            Op::IsNotEmpty => !value.is_empty(),
        }
    }
}

/// A parsed query: an AND of OR-groups, plus the ordering.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Query {
    groups: Vec<Vec<Condition>>,
    order: Vec<(String, bool)>,
}

fn list(v: &str) -> Vec<String> {
    v.split(',').map(|s| s.trim().to_string()).collect()
}

fn parse_condition(term: &str, known: &dyn Fn(&str) -> bool) -> Option<Condition> {
    let split = term
        .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.'))
        .unwrap_or(term.len());
    let (field, rest) = term.split_at(split);
    if field.is_empty() || !known(field) {
        return None;
    }
    let op = if let Some(v) = rest.strip_prefix("!=") {
        Op::Ne(v.into())
    } else if let Some(v) = rest.strip_prefix('=') {
        Op::Eq(v.into())
    } else if let Some(v) = rest.strip_prefix("NOT IN") {
        Op::NotIn(list(v))
    } else if let Some(v) = rest.strip_prefix("IN") {
        Op::In(list(v))
    } else if let Some(v) = rest.strip_prefix("STARTSWITH") {
        Op::StartsWith(v.into())
    } else if let Some(v) = rest.strip_prefix("LIKE") {
        Op::Like(v.into())
    } else if rest == "ISEMPTY" {
        Op::IsEmpty
    } else if rest == "ISNOTEMPTY" {
        Op::IsNotEmpty
    } else {
        return None;
    };
    Some(Condition {
        field: field.into(),
        op,
    })
}

impl Query {
    /// Parses `sysparm_query`; `known` tells which fields exist on the table.
    pub fn parse(text: &str, known: &dyn Fn(&str) -> bool) -> Query {
        let mut query = Query::default();
        for term in text.split('^') {
            let term = term.trim();
            if term.is_empty() || term == "EQ" || term == "NQ" {
                continue;
            }
            if let Some(field) = term.strip_prefix("ORDERBYDESC") {
                if known(field) {
                    query.order.push((field.into(), true));
                }
                continue;
            }
            if let Some(field) = term.strip_prefix("ORDERBY") {
                if known(field) {
                    query.order.push((field.into(), false));
                }
                continue;
            }
            if let Some(rest) = term.strip_prefix("OR") {
                if let (Some(condition), Some(last)) =
                    (parse_condition(rest, known), query.groups.last_mut())
                {
                    last.push(condition);
                }
                continue;
            }
            if let Some(condition) = parse_condition(term, known) {
                query.groups.push(vec![condition]);
            }
        }
        query
    }

    pub fn matches(&self, get: &dyn Fn(&str) -> String) -> bool {
        self.groups
            .iter()
            .all(|group| group.iter().any(|c| c.matches(&get(&c.field))))
    }

    pub fn compare(&self, a: &dyn Fn(&str) -> String, b: &dyn Fn(&str) -> String) -> Ordering {
        for (field, desc) in &self.order {
            let ord = a(field).cmp(&b(field));
            let ord = if *desc { ord.reverse() } else { ord };
            if ord != Ordering::Equal {
                return ord;
            }
        }
        Ordering::Equal
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn known(f: &str) -> bool {
        matches!(
            f,
            "state" | "correlation_id" | "sys_id" | "number" | "priority"
        )
    }

    fn rec(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn hit(q: &Query, r: &HashMap<String, String>) -> bool {
        q.matches(&|f| r.get(f).cloned().unwrap_or_default())
    }

    #[test]
    fn and_or_in_and_not_equal() {
        let a = rec(&[("state", "1"), ("correlation_id", "k1"), ("number", "INC1")]);
        let b = rec(&[("state", "6"), ("correlation_id", "k2"), ("number", "INC2")]);
        let q = Query::parse("state=1^ORstate=6^correlation_id=k2", &known);
        assert!(!hit(&q, &a));
        assert!(hit(&q, &b));
        let q = Query::parse("stateIN1,2,3", &known);
        assert!(hit(&q, &a) && !hit(&q, &b));
        let q = Query::parse("state!=1", &known);
        assert!(!hit(&q, &a) && hit(&q, &b));
        let q = Query::parse("numberSTARTSWITHinc^correlation_idISNOTEMPTY", &known);
        assert!(hit(&q, &a) && hit(&q, &b));
    }

    #[test]
    fn unknown_fields_and_operators_are_dropped() {
        let a = rec(&[("state", "1")]);
        let q = Query::parse("corelation_id=nothing^state=1", &known);
        assert!(hit(&q, &a));
        let q = Query::parse("state>=9", &known);
        assert!(hit(&q, &a));
    }

    #[test]
    fn ordering() {
        let a = rec(&[("number", "INC1"), ("priority", "2")]);
        let b = rec(&[("number", "INC2"), ("priority", "2")]);
        let get = |r: &HashMap<String, String>| {
            let r = r.clone();
            move |f: &str| r.get(f).cloned().unwrap_or_default()
        };
        let q = Query::parse("ORDERBYpriority^ORDERBYDESCnumber", &known);
        assert_eq!(q.compare(&get(&a), &get(&b)), Ordering::Greater);
        let q = Query::parse("ORDERBYnumber", &known);
        assert_eq!(q.compare(&get(&a), &get(&b)), Ordering::Less);
    }
}
