//! Kubernetes resource quantities (`500m`, `2`, `1.5Gi`, `1e3`): their grammar checked as the API server's parser reads it, and their values, so a bad one fails here with its flag named rather than at `kubectl apply`.

use std::fmt;

/// A quantity that parsed: its text, kept as typed, and its value for comparisons.
#[derive(Clone, Debug, PartialEq)]
pub struct Quantity {
    pub text: String,
    /// The value in base units (cores, bytes); approximate past 2^53, which only comparisons see.
    pub value: f64,
}

/// Why a text is not a quantity.
#[derive(Debug, PartialEq, Eq)]
pub enum QuantityError {
    /// No number where one must be, or characters after it that no suffix spells.
    Syntax,
    /// An exponent (`e…`) too large for the API server.
    ExponentRange,
}

impl fmt::Display for QuantityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QuantityError::Syntax => f.write_str(
                "not a Kubernetes quantity: a number, then at most one suffix: m, k, M, G, T, P, E (powers of 1000), Ki, Mi, Gi, Ti, Pi, Ei (powers of 1024) or an exponent such as e3; e.g. 500m, 2, 1.5Gi",
            ),
            QuantityError::ExponentRange => {
                f.write_str("its exponent is out of the range Kubernetes accepts")
            }
        }
    }
}

/// The suffixes Kubernetes' parser knows, with the power of ten or of two each stands for.
const DECIMAL_SI: &[(&str, i32)] = &[
    ("n", -9),
    ("u", -6),
    ("m", -3),
    ("k", 3),
    ("M", 6),
    ("G", 9),
    ("T", 12),
    ("P", 15),
    ("E", 18),
];
const BINARY_SI: &[(&str, i32)] = &[
    ("Ki", 10),
    ("Mi", 20),
    ("Gi", 30),
    ("Ti", 40),
    ("Pi", 50),
    ("Ei", 60),
];

/// Parses `text` by Kubernetes' grammar: an optional sign, digits with at most one decimal point
/// (`1`, `1.5`, `1.`, `.5`), then nothing, a decimal or binary SI suffix, or `e`/`E` and a signed
/// integer exponent. No spaces anywhere.
pub fn parse(text: &str) -> Result<Quantity, QuantityError> {
    let bytes = text.as_bytes();
    let mut i = 0;
    let negative = match bytes.first() {
        Some(b'-') => {
            i += 1;
            true
        }
        Some(b'+') => {
            i += 1;
            false
        }
        _ => false,
    };
    let start = i;
    let mut digits = 0;
    let mut point = false;
    while i < bytes.len() {
        match bytes[i] {
            b'0'..=b'9' => digits += 1,
            b'.' if !point => point = true,
            _ => break,
        }
        i += 1;
    }
    if digits == 0 {
        return Err(QuantityError::Syntax);
    }
    let number: f64 = text[start..i]
        .parse()
        .or_else(|_| format!("0{}", &text[start..i]).parse())
        .map_err(|_| QuantityError::Syntax)?;
    let suffix = &text[i..];
    let scale = if suffix.is_empty() {
        1.0
    } else if let Some((_, p)) = BINARY_SI.iter().find(|(s, _)| *s == suffix) {
        2f64.powi(*p)
    } else if let Some((_, p)) = DECIMAL_SI.iter().find(|(s, _)| *s == suffix) {
        10f64.powi(*p)
    } else if let Some(exp) = suffix.strip_prefix(['e', 'E']) {
        let body = exp.strip_prefix(['+', '-']).unwrap_or(exp);
        if body.is_empty() || !body.bytes().all(|b| b.is_ascii_digit()) {
            return Err(QuantityError::Syntax);
        }
        // The API server keeps the scale in an int32.
        let e: i32 = exp.parse().map_err(|_| QuantityError::ExponentRange)?;
        10f64.powi(e)
    } else {
        return Err(QuantityError::Syntax);
    };
    let value = number * scale;
    Ok(Quantity {
        text: text.to_string(),
        value: if negative { -value } else { value },
    })
}

/// A quantity for a container resource or a volume size: grammar checked, and not negative.
/// Errors name the flag and the value.
pub fn resource(flag: &str, text: &str) -> anyhow::Result<Quantity> {
    let q = parse(text).map_err(|e| anyhow::anyhow!("{flag} {text:?} is {e}"))?;
    if q.value < 0.0 {
        anyhow::bail!("{flag} {text:?} is negative: give a quantity of 0 or more");
    }
    Ok(q)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_forms_kubernetes_accepts() {
        for (text, value) in [
            ("1", 1.0),
            ("500m", 0.5),
            ("0.5", 0.5),
            ("1.", 1.0),
            (".5", 0.5),
            ("+2", 2.0),
            ("-2", -2.0),
            ("1k", 1000.0),
            ("1Ki", 1024.0),
            ("1.5Gi", 1.5 * 1024.0 * 1024.0 * 1024.0),
            ("2M", 2e6),
            ("1E", 1e18),
            ("1Ei", 2f64.powi(60)),
            ("1e3", 1000.0),
            ("1E3", 1000.0),
            ("1e-3", 0.001),
            ("1e+3", 1000.0),
            ("250u", 250e-6),
            ("7n", 7e-9),
            ("0", 0.0),
        ] {
            let q = parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert!(
                (q.value - value).abs() <= value.abs() * 1e-12,
                "{text}: {} != {value}",
                q.value
            );
            assert_eq!(q.text, text);
        }
    }

    #[test]
    fn what_it_refuses() {
        for text in [
            "", "m", ".", "-", "1 ", " 1", "1 Gi", "1GB", "1gi", "1K", "1KiB", "1.2.3", "1e",
            "1e+", "1e1.5", "1ee3", "Gi", "1Mi1", "0x10", "1,5", "one", "1m3",
        ] {
            assert_eq!(
                parse(text),
                Err(QuantityError::Syntax),
                "{text:?} was accepted"
            );
        }
        assert_eq!(parse("1e99999999999"), Err(QuantityError::ExponentRange));
    }

    #[test]
    fn a_resource_names_its_flag_and_refuses_negatives() {
        let e = resource("--requests-memory", "1GB")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("--requests-memory \"1GB\" is not a Kubernetes quantity"),
            "{e}"
        );
        let e = resource("--limits-cpu", "-1").unwrap_err().to_string();
        assert!(e.contains("--limits-cpu \"-1\" is negative"), "{e}");
        assert_eq!(resource("--limits-cpu", "0").unwrap().value, 0.0);
    }
}
