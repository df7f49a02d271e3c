//! `--source-policy-file`: the JSON source policy buildctl reads, checked and turned into the Solve request's policy before a daemon starts.
//!
//! buildctl decodes the file with Go's encoding/json into the protobuf
//! structs: snake_case keys (matched without regard to case), enums by name
//! or number, unknown keys ignored.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

use crate::proto::moby::buildkit::v1::sourcepolicy as pb;

#[derive(Deserialize, Default)]
#[serde(default)]
struct Policy {
    #[serde(alias = "Version")]
    version: i64,
    #[serde(alias = "Rules")]
    rules: Vec<Rule>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Rule {
    #[serde(alias = "Action", deserialize_with = "action")]
    action: i32,
    #[serde(alias = "Selector")]
    selector: Option<Selector>,
    #[serde(alias = "Updates")]
    updates: Option<Update>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Selector {
    #[serde(alias = "Identifier")]
    identifier: String,
    #[serde(
        alias = "Match_type",
        alias = "MATCH_TYPE",
        deserialize_with = "match_type"
    )]
    match_type: i32,
    #[serde(alias = "Constraints")]
    constraints: Vec<Constraint>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Constraint {
    #[serde(alias = "Key")]
    key: String,
    #[serde(alias = "Value")]
    value: String,
    #[serde(alias = "Condition", deserialize_with = "condition")]
    condition: i32,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Update {
    #[serde(alias = "Identifier")]
    identifier: String,
    #[serde(alias = "Attrs")]
    attrs: HashMap<String, String>,
}

/// An enum given by its protobuf name or its number.
fn enum_value<'de, D: Deserializer<'de>>(
    d: D,
    what: &str,
    from_name: fn(&str) -> Option<i32>,
    valid: fn(i32) -> bool,
) -> std::result::Result<i32, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Name(String),
        Number(i32),
    }
    match Raw::deserialize(d)? {
        Raw::Name(n) => {
            from_name(&n).ok_or_else(|| D::Error::custom(format!("{n:?} is not a {what}")))
        }
        Raw::Number(v) if valid(v) => Ok(v),
        Raw::Number(v) => Err(D::Error::custom(format!("{v} is not a {what}"))),
    }
}

fn action<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<i32, D::Error> {
    enum_value(
        d,
        "policy action (ALLOW, DENY, CONVERT)",
        |n| pb::PolicyAction::from_str_name(n).map(|v| v as i32),
        |v| pb::PolicyAction::try_from(v).is_ok(),
    )
}

fn match_type<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<i32, D::Error> {
    enum_value(
        d,
        "match type (WILDCARD, EXACT, REGEX)",
        |n| pb::MatchType::from_str_name(n).map(|v| v as i32),
        |v| pb::MatchType::try_from(v).is_ok(),
    )
}

fn condition<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<i32, D::Error> {
    enum_value(
        d,
        "condition (EQUAL, NOTEQUAL, MATCHES)",
        |n| pb::AttrMatch::from_str_name(n).map(|v| v as i32),
        |v| pb::AttrMatch::try_from(v).is_ok(),
    )
}

/// Reads and checks a policy file.
pub fn load(path: &Path) -> Result<pb::Policy> {
    let bytes = std::fs::read(path).with_context(|| {
        format!(
            "cannot read the --source-policy-file {}: check the path",
            path.display()
        )
    })?;
    parse(&bytes).with_context(|| {
        format!(
            "the --source-policy-file {} is not a source policy: fix its JSON (keys version, rules[].action|selector|updates)",
            path.display()
        )
    })
}

fn parse(bytes: &[u8]) -> Result<pb::Policy> {
    let p: Policy = serde_json::from_slice(bytes)?;
    Ok(pb::Policy {
        version: p.version,
        rules: p
            .rules
            .into_iter()
            .map(|r| pb::Rule {
                action: r.action,
                selector: r.selector.map(|s| pb::Selector {
                    identifier: s.identifier,
                    match_type: s.match_type,
                    constraints: s
                        .constraints
                        .into_iter()
                        .map(|c| pb::AttrConstraint {
                            key: c.key,
                            value: c.value,
                            condition: c.condition,
                        })
                        .collect(),
                }),
                updates: r.updates.map(|u| pb::Update {
                    identifier: u.identifier,
                    attrs: u.attrs,
                }),
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_numbers_and_unknown_keys_as_go_reads_them() {
        let p = parse(
            br#"{"version":1,"comment":"ignored","rules":[
              {"action":"CONVERT","selector":{"identifier":"docker-image://alpine:*","match_type":"WILDCARD"},
               "updates":{"identifier":"docker-image://alpine:3.20","attrs":{"k":"v"}}},
              {"Action":1,"selector":{"identifier":"local://ctx","match_type":1,
               "constraints":[{"key":"a","value":"b","condition":"MATCHES"}]}}]}"#,
        )
        .unwrap();
        assert_eq!(p.version, 1);
        assert_eq!(p.rules[0].action, pb::PolicyAction::Convert as i32);
        assert_eq!(p.rules[0].updates.as_ref().unwrap().attrs["k"], "v");
        assert_eq!(p.rules[1].action, pb::PolicyAction::Deny as i32);
        let s = p.rules[1].selector.as_ref().unwrap();
        assert_eq!(s.match_type, pb::MatchType::Exact as i32);
        assert_eq!(s.constraints[0].condition, pb::AttrMatch::Matches as i32);
    }

    #[test]
    fn bad_values_are_named() {
        let e = parse(br#"{"rules":[{"action":"BLOCK"}]}"#).unwrap_err();
        assert!(
            e.to_string().contains("\"BLOCK\" is not a policy action"),
            "{e}"
        );
        assert!(parse(br#"{"rules":[{"action":7}]}"#).is_err());
        assert!(parse(b"rules: []").is_err());
    }
}
