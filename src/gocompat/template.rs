//! The part of Go's text/template and encoding/json that buildctl's `--format` takes: `{{json .}}` and `{{.Field.Field}}` over a Go value, printed byte for byte as Go does.
//!
//! buildctl runs a user's template over its protobuf structs. bkrun holds the same records as
//! prost types, so a caller describes each record as a [`Value`] (Go field names, json tags)
//! and this module does the rest. Other template syntax (pipelines, `if`, `range`, functions
//! other than `json`) is refused when the template is parsed, never half-run.

use anyhow::{bail, Result};

/// A Go value as text/template and encoding/json see it.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Str(String),
    Int(i64),
    Bool(bool),
    /// A named integer with a `String()` method (a protobuf enum): JSON writes the number,
    /// a template prints the name.
    Enum(i64, String),
    /// `[]byte`: base64 in JSON.
    Bytes(Vec<u8>),
    /// A pointer to a struct; `None` is nil.
    Struct(Option<Vec<Field>>),
    List(Vec<Value>),
    /// A map with its keys as JSON writes them (integers in decimal); sorted when written.
    Map(Vec<(String, Value)>),
}

/// One struct field. protoc-gen-go tags every field `omitempty`, so zero values are left out.
#[derive(Clone, Debug, PartialEq)]
pub struct Field {
    /// The Go name, as a template names it (`.Record.Ref`).
    pub name: &'static str,
    /// The json tag's name.
    pub json: &'static str,
    pub value: Value,
}

impl Field {
    pub fn new(name: &'static str, json: &'static str, value: Value) -> Field {
        Field { name, json, value }
    }
}

impl Value {
    /// Go's `omitempty` test: false, 0, "", nil, and empty slices and maps.
    fn is_empty(&self) -> bool {
        match self {
            Value::Str(s) => s.is_empty(),
            Value::Int(n) | Value::Enum(n, _) => *n == 0,
            Value::Bool(b) => !b,
            Value::Bytes(b) => b.is_empty(),
            Value::Struct(s) => s.is_none(),
            Value::List(l) => l.is_empty(),
            Value::Map(m) => m.is_empty(),
        }
    }

    /// `json.Marshal` of the value, with `SetEscapeHTML(false)` as buildctl's `json` function.
    pub fn json(&self) -> String {
        let mut out = String::new();
        self.write_json(&mut out);
        out
    }

    fn write_json(&self, out: &mut String) {
        use base64::Engine as _;
        match self {
            Value::Str(s) => quote(out, s),
            Value::Int(n) | Value::Enum(n, _) => out.push_str(&n.to_string()),
            Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Value::Bytes(b) => quote(out, &base64::engine::general_purpose::STANDARD.encode(b)),
            Value::Struct(None) => out.push_str("null"),
            Value::Struct(Some(fields)) => {
                out.push('{');
                let mut first = true;
                for f in fields.iter().filter(|f| !f.value.is_empty()) {
                    if !first {
                        out.push(',');
                    }
                    first = false;
                    quote(out, f.json);
                    out.push(':');
                    f.value.write_json(out);
                }
                out.push('}');
            }
            Value::List(items) => {
                out.push('[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    v.write_json(out);
                }
                out.push(']');
            }
            Value::Map(entries) => {
                // encoding/json sorts map keys by their string form, integer keys included.
                let mut sorted: Vec<&(String, Value)> = entries.iter().collect();
                sorted.sort_by(|a, b| a.0.cmp(&b.0));
                out.push('{');
                for (i, (k, v)) in sorted.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    quote(out, k);
                    out.push(':');
                    v.write_json(out);
                }
                out.push('}');
            }
        }
    }

    /// The field a template path names (`["Record", "Ref"]`).
    fn lookup(&self, path: &[String]) -> Result<&Value> {
        let mut v = self;
        for (i, name) in path.iter().enumerate() {
            let shown = || format!(".{}", path[..=i].join("."));
            v = match v {
                Value::Struct(Some(fields)) => match fields.iter().find(|f| f.name == *name) {
                    Some(f) => &f.value,
                    None => bail!("can't evaluate field {name} in {}", shown()),
                },
                Value::Struct(None) => bail!("nil pointer evaluating {}", shown()),
                _ => bail!("{} is not a struct field", shown()),
            };
        }
        Ok(v)
    }

    /// The value as text/template prints it (`fmt.Print`); only scalars, since Go prints
    /// structs and maps in forms no one parses (protobuf's even varies between runs).
    fn print(&self, out: &mut String, path: &str) -> Result<()> {
        match self {
            Value::Str(s) => out.push_str(s),
            Value::Int(n) => out.push_str(&n.to_string()),
            Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Value::Enum(_, name) => out.push_str(name),
            _ => bail!("{path} is not a string, number or bool: print it with {{{{json {path}}}}}"),
        }
        Ok(())
    }
}

/// Appends `s` as a JSON string the way Go's encoder writes it without HTML escaping (buildctl's
/// templates turn it off).
fn quote(out: &mut String, s: &str) {
    super::jsonstr::quote_into(out, s, super::jsonstr::Html::Kept);
}

/// A parsed `--format` template.
#[derive(Clone, Debug, PartialEq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Clone, Debug, PartialEq)]
enum Part {
    Text(String),
    /// `{{.A.B}}` (empty path: `{{.}}`), printed, or with `json` written as JSON.
    Field {
        path: Vec<String>,
        json: bool,
    },
}

impl Template {
    /// Parses `format` as buildctl does (the alias `json` is `{{json .}}`), refusing whatever
    /// is not text, `{{.Path}}` or `{{json .Path}}`; `{{-` and `-}}` trim spaces as in Go.
    pub fn parse(format: &str) -> Result<Template> {
        let format = if format == "json" {
            "{{json .}}"
        } else {
            format
        };
        let mut parts = Vec::new();
        let mut rest = format;
        let mut trim_next = false;
        while !rest.is_empty() {
            let (text, action) = match rest.find("{{") {
                Some(i) => (&rest[..i], Some(&rest[i + 2..])),
                None => (rest, None),
            };
            let mut text = if trim_next { text.trim_start() } else { text };
            let Some(after) = action else {
                push_text(&mut parts, text);
                break;
            };
            let Some(end) = after.find("}}") else {
                bail!("unclosed action in the template {format:?}");
            };
            let mut inner = &after[..end];
            if let Some(i) = inner.strip_prefix("- ") {
                text = text.trim_end();
                inner = i;
            }
            trim_next = false;
            if let Some(i) = inner.strip_suffix(" -") {
                trim_next = true;
                inner = i;
            }
            push_text(&mut parts, text);
            parts.push(action_part(inner.trim(), format)?);
            rest = &after[end + 2..];
        }
        Ok(Template { parts })
    }

    /// Runs the template over `v`.
    pub fn execute(&self, v: &Value) -> Result<String> {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Field { path, json } => {
                    let field = v.lookup(path)?;
                    if *json {
                        field.write_json(&mut out);
                    } else {
                        field.print(&mut out, &format!(".{}", path.join(".")))?;
                    }
                }
            }
        }
        Ok(out)
    }
}

fn push_text(parts: &mut Vec<Part>, text: &str) {
    if !text.is_empty() {
        parts.push(Part::Text(text.to_string()));
    }
}

/// One action's words: `.Path` or `json .Path`.
fn action_part(words: &str, format: &str) -> Result<Part> {
    let (json, arg) = match words.split_whitespace().collect::<Vec<_>>()[..] {
        [arg] => (false, arg),
        ["json", arg] => (true, arg),
        _ => bail!("{{{{{words}}}}} in {format:?}: bkrun's --format takes {{{{.Field}}}} (e.g. {{{{.Record.Ref}}}}) and {{{{json .}}}} or {{{{json .Field}}}}; for other Go templates use `bkrun exec -- buildctl …`"),
    };
    let path = match arg {
        "." => Vec::new(),
        a if a.starts_with('.') => {
            let names: Vec<String> = a[1..].split('.').map(str::to_string).collect();
            let ident = |n: &String| {
                n.chars()
                    .next()
                    .is_some_and(|c| c.is_alphabetic() || c == '_')
                    && n.chars().all(|c| c.is_alphanumeric() || c == '_')
            };
            if !names.iter().all(ident) {
                bail!("{arg:?} in {format:?} is not a field path such as .Record.Ref");
            }
            names
        }
        _ => bail!("{arg:?} in {format:?} is not a field path such as .Record.Ref (or . itself)"),
    };
    Ok(Part::Field { path, json })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(pinned: bool) -> Value {
        Value::Struct(Some(vec![
            Field::new("Type", "type", Value::Enum(1, "COMPLETE".into())),
            Field::new(
                "Record",
                "record",
                Value::Struct(Some(vec![
                    Field::new("Ref", "Ref", Value::Str("abc".into())),
                    Field::new(
                        "Attrs",
                        "Attrs",
                        Value::Map(vec![
                            ("b".into(), Value::Str("<&>\u{2028}\"\n\u{1}".into())),
                            ("a".into(), Value::Str(String::new())),
                        ]),
                    ),
                    Field::new("List", "List", Value::List(vec![])),
                    Field::new("Error", "error", Value::Struct(None)),
                    Field::new("Empty", "empty", Value::Struct(Some(vec![]))),
                    Field::new("Blob", "blob", Value::Bytes(vec![0xff, 0])),
                    Field::new("Generation", "Generation", Value::Int(0)),
                    Field::new("Pinned", "pinned", Value::Bool(pinned)),
                ])),
            ),
        ]))
    }

    #[test]
    fn json_is_go_s_with_omitempty_sorted_maps_and_no_html_escaping() {
        assert_eq!(
            Template::parse("json")
                .unwrap()
                .execute(&record(false))
                .unwrap(),
            r#"{"type":1,"record":{"Ref":"abc","Attrs":{"a":"","b":"<&>\u2028\"\n\u0001"},"empty":{},"blob":"/wA="}}"#
        );
        let pinned = Template::parse("{{json .Record.Pinned}}").unwrap();
        assert_eq!(pinned.execute(&record(true)).unwrap(), "true");
        assert_eq!(Value::Struct(None).json(), "null");
        assert_eq!(Value::Enum(0, "STARTED".into()).json(), "0");
    }

    #[test]
    fn fields_print_as_go_prints_them() {
        let t = Template::parse(
            "{{.Type}} {{ .Record.Ref }}/{{.Record.Generation}} {{.Record.Pinned}}",
        )
        .unwrap();
        assert_eq!(t.execute(&record(true)).unwrap(), "COMPLETE abc/0 true");
        let t = Template::parse("a  {{- .Record.Ref -}}  \n b").unwrap();
        assert_eq!(t.execute(&record(true)).unwrap(), "aabcb");
        assert_eq!(
            Template::parse("plain")
                .unwrap()
                .execute(&record(true))
                .unwrap(),
            "plain"
        );
        let run = |f: &str| {
            Template::parse(f)
                .unwrap()
                .execute(&record(false))
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            run("{{.Record.Nope}}"),
            "can't evaluate field Nope in .Record.Nope"
        );
        assert_eq!(
            run("{{.Record.Error.Code}}"),
            "nil pointer evaluating .Record.Error.Code"
        );
        assert!(
            run("{{.Record}}").contains("print it with {{json .Record}}"),
            "{}",
            run("{{.Record}}")
        );
        assert!(run("{{.Record.Attrs}}").contains("{{json .Record.Attrs}}"));
    }

    #[test]
    fn other_template_syntax_is_refused_when_parsed() {
        for f in [
            "{{range .}}x{{end}}",
            "{{if .Record.Pinned}}p{{end}}",
            "{{.Record.Ref | printf \"%s\"}}",
            "{{printf \"%s\" .Record.Ref}}",
            "{{json}}",
            "{{$x := .}}",
            "{{/* c */}}",
            "{{.Record.}}",
            "{{.Record.Ref",
        ] {
            assert!(Template::parse(f).is_err(), "{f}");
        }
        let e = Template::parse("{{range .}}x{{end}}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("bkrun exec -- buildctl"), "{e}");
    }
}
