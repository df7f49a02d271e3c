//! Attestation flags of every grammar (buildx's `--sbom`, `--provenance`, `--attest type=…`) → the frontend options `attest:sbom` and `attest:provenance` that BuildKit's frontends read, with the values buildx sends.

use anyhow::{bail, Context, Result};

use super::csv::{self, parse_bool};
use super::{clip, clip_quoted};

/// The provenance buildx asks for when the line names none: minimal, and only where the
/// exporter attaches attestations inline (BuildKit does it for the images it pushes, not for
/// oci or docker archives).
pub const BUILDX_DEFAULT_PROVENANCE: &str = "mode=min,inline-only=true";

/// One attestation as asked for: its type, whether it is turned off, and its other attributes
/// in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attest {
    pub kind: String,
    pub disabled: bool,
    pub attrs: Vec<(String, String)>,
}

impl Attest {
    /// The frontend option's value as buildx writes it: `type=KIND` and the attributes, each
    /// field quoted as Go's CSV reader (which BuildKit parses it with) needs.
    fn value(&self) -> String {
        let mut fields = vec![format!("type={}", self.kind)];
        fields.extend(self.attrs.iter().map(|(k, v)| quoted(&format!("{k}={v}"))));
        fields.join(",")
    }
}

fn quoted(field: &str) -> String {
    if field.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field.to_string()
    }
}

/// `--attest VALUE`: `type=sbom|provenance[,disabled=BOOL][,k=v…]`, checked.
pub fn parse(flag: &str, value: &str) -> Result<Attest> {
    let what = || format!("{flag} {}", clip_quoted(value));
    let fields = csv::pairs(value).with_context(what)?;
    let (mut kind, mut disabled, mut attrs) = (None, false, Vec::new());
    for (k, v) in fields {
        match k.as_str() {
            "type" => kind = Some(v),
            "disabled" => {
                disabled = parse_bool(&v).with_context(|| {
                    format!("{}: disabled={} is not true or false", what(), clip(&v))
                })?
            }
            _ => attrs.push((k, v)),
        }
    }
    let Some(kind) = kind else {
        bail!(
            "{}: the attestation type is missing: add type=sbom or type=provenance",
            what()
        );
    };
    let a = Attest {
        kind,
        disabled,
        attrs,
    };
    if let Err(why) = check(&a) {
        bail!("{}: {why}", what());
    }
    Ok(a)
}

/// `--sbom VALUE` or `--provenance VALUE` as buildx reads them: a boolean turns the
/// attestation on or off, anything else is its attributes (`--provenance=mode=max`).
pub fn shorthand(kind: &str, value: &str) -> Result<Attest> {
    let flag = format!("--{kind}");
    match parse_bool(value) {
        Some(on) => Ok(Attest {
            kind: kind.into(),
            disabled: !on,
            attrs: Vec::new(),
        }),
        None if value.is_empty() => {
            bail!("{flag} needs a value: true, false or attributes such as mode=max")
        }
        None => parse(&flag, &format!("type={kind},{value}")),
    }
}

/// The attributes BuildKit checks late (after the daemon started and the build ran) checked
/// now: the type, provenance's mode, and the SBOM generator's image name.
fn check(a: &Attest) -> Result<(), String> {
    let get = |key: &str| {
        a.attrs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    match a.kind.as_str() {
        "provenance" => {
            if let Some(m) = get("mode").filter(|m| !matches!(*m, "min" | "max")) {
                return Err(format!("provenance mode={} is not min or max", clip(m)));
            }
        }
        "sbom" => {
            if let Some(g) = get("generator") {
                if let Some(why) = super::reference::problem(g) {
                    return Err(format!(
                        "the SBOM generator {} is not an image reference: {why}",
                        clip(g)
                    ));
                }
            }
        }
        other => {
            return Err(format!(
                "type={} is not an attestation BuildKit makes: use type=sbom or type=provenance",
                clip(other)
            ))
        }
    }
    Ok(())
}

/// Every attestation a line asks for, in buildx's order: each `--attest`, then `--sbom`, then
/// `--provenance`. A type asked for twice is refused, as buildx refuses it.
pub fn gather(
    attest: &[String],
    sbom: Option<&str>,
    provenance: Option<&str>,
) -> Result<Vec<Attest>> {
    let mut out: Vec<Attest> = Vec::new();
    let given = attest
        .iter()
        .map(|v| parse("--attest", v))
        .chain(sbom.map(|v| shorthand("sbom", v)))
        .chain(provenance.map(|v| shorthand("provenance", v)));
    for a in given {
        let a = a?;
        if out.iter().any(|o| o.kind == a.kind) {
            bail!(
                "the {} attestation is asked for twice (--attest type={0} and --{0}, or two --attest): keep one",
                a.kind
            );
        }
        out.push(a);
    }
    Ok(out)
}

/// The frontend options (`attest:KIND=VALUE`, as `--opt` takes them) for `attests`; with
/// `default_provenance`, that provenance when the line says nothing of provenance (a disabled
/// one, `--provenance=false`, keeps it off).
pub fn opts(attests: &[Attest], default_provenance: Option<&str>) -> Vec<String> {
    let mut out: Vec<String> = attests
        .iter()
        .filter(|a| !a.disabled)
        .map(|a| format!("attest:{}={}", a.kind, a.value()))
        .collect();
    if let Some(d) = default_provenance {
        if !attests.iter().any(|a| a.kind == "provenance") {
            out.push(format!("attest:provenance={d}"));
        }
    }
    out
}

/// Refuses a type asked for both through these flags and as `--opt attest:KIND=…`, where one
/// would silently win.
pub fn not_also_in_opts(attests: &[Attest], opt: &[String]) -> Result<()> {
    for a in attests {
        if opt
            .iter()
            .any(|o| o.starts_with(&format!("attest:{}=", a.kind)))
        {
            bail!(
                "the {0} attestation is asked for twice (--opt attest:{0}=… and --{0} or --attest type={0}): keep one",
                a.kind
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts_for(
        attest: &[&str],
        sbom: Option<&str>,
        prov: Option<&str>,
        default: bool,
    ) -> Vec<String> {
        let attest: Vec<String> = attest.iter().map(|s| s.to_string()).collect();
        let a = gather(&attest, sbom, prov).unwrap();
        opts(&a, default.then_some(BUILDX_DEFAULT_PROVENANCE))
    }

    #[test]
    fn buildx_spellings_become_frontend_options() {
        assert_eq!(
            opts_for(&[], None, None, true),
            ["attest:provenance=mode=min,inline-only=true"]
        );
        assert!(opts_for(&[], None, None, false).is_empty());
        assert!(opts_for(&[], None, Some("false"), true).is_empty());
        assert_eq!(
            opts_for(&[], None, Some("true"), false),
            ["attest:provenance=type=provenance"]
        );
        assert_eq!(
            opts_for(&[], Some("true"), Some("mode=max"), true),
            [
                "attest:sbom=type=sbom",
                "attest:provenance=type=provenance,mode=max"
            ]
        );
        assert_eq!(
            opts_for(
                &["type=sbom,generator=127.0.0.1:5000/scan:1"],
                None,
                None,
                true
            ),
            [
                "attest:sbom=type=sbom,generator=127.0.0.1:5000/scan:1",
                "attest:provenance=mode=min,inline-only=true"
            ]
        );
        assert_eq!(
            opts_for(
                &["type=provenance,disabled=true"],
                Some("generator=r/s"),
                None,
                true
            ),
            ["attest:sbom=type=sbom,generator=r/s"]
        );
        // A value with a comma is quoted, so BuildKit's CSV reader gives it back whole.
        assert_eq!(
            opts_for(&["type=provenance,\"builder-id=a,b\""], None, None, false),
            ["attest:provenance=type=provenance,\"builder-id=a,b\""]
        );
    }

    #[test]
    fn refusals_name_the_flag_and_the_way() {
        let err = |attest: &[&str], sbom: Option<&str>, prov: Option<&str>| {
            let attest: Vec<String> = attest.iter().map(|s| s.to_string()).collect();
            format!("{:#}", gather(&attest, sbom, prov).unwrap_err())
        };
        assert!(err(&["generator=x"], None, None).contains("type=sbom or type=provenance"));
        assert!(err(&["type=vex"], None, None).contains("not an attestation BuildKit makes"));
        assert!(err(&[], None, Some("mode=most")).contains("mode=most is not min or max"));
        assert!(err(&[], Some("generator=r/UPPER"), None).contains("not an image reference"));
        assert!(err(&["type=sbom"], Some("true"), None).contains("asked for twice"));
        assert!(err(&["type=sbom,disabled=maybe"], None, None).contains("not true or false"));
        assert!(err(&[], Some(""), None).contains("needs a value"));
        let a = gather(&[], Some("true"), None).unwrap();
        let e = not_also_in_opts(&a, &["attest:sbom=generator=x".into()]).unwrap_err();
        assert!(e.to_string().contains("asked for twice"));
        assert!(not_also_in_opts(&a, &["attest:provenance=mode=max".into()]).is_ok());
    }
}
