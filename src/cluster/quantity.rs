//! Kubernetes resource quantities (`"8"`, `500m`, `16Gi`, `2k`, `1e3`) as numbers: the one
//! reader of the format on the Rust side (cluster state, quota charges), following the
//! grammar of apimachinery's `resource.Quantity`:
//!
//! ```text
//! <quantity>        ::= <signedNumber><suffix>
//! <signedNumber>    ::= <number> | <sign><number>        <sign> ::= "+" | "-"
//! <number>          ::= <digits> | <digits>.<digits> | <digits>. | .<digits>
//! <suffix>          ::= <binarySI> | <decimalExponent> | <decimalSI>
//! <binarySI>        ::= Ki | Mi | Gi | Ti | Pi | Ei
//! <decimalSI>       ::= n | u | m | "" | k | M | G | T | P | E
//! <decimalExponent> ::= "e" <signedInteger> | "E" <signedInteger>
//! ```
//!
//! The policies read quantities with the Rego rule `quantity` in policies/lib_workload.rego,
//! which follows the same grammar; the golden case file tests/cases/quantities.yaml holds
//! them to the same answers.

use serde_json::Value as Json;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{input:?} is not a Kubernetes quantity: {reason}")]
pub struct QuantityError {
    pub input: String,
    pub reason: &'static str,
}

/// The power of ten or of two a suffix stands for.
enum Scale {
    Ten(i32),
    Two(i32),
}

fn suffix_scale(suffix: &str) -> Option<Scale> {
    Some(match suffix {
        "" => Scale::Ten(0),
        "n" => Scale::Ten(-9),
        "u" => Scale::Ten(-6),
        "m" => Scale::Ten(-3),
        "k" => Scale::Ten(3),
        "M" => Scale::Ten(6),
        "G" => Scale::Ten(9),
        "T" => Scale::Ten(12),
        "P" => Scale::Ten(15),
        "E" => Scale::Ten(18),
        "Ki" => Scale::Two(10),
        "Mi" => Scale::Two(20),
        "Gi" => Scale::Two(30),
        "Ti" => Scale::Two(40),
        "Pi" => Scale::Two(50),
        "Ei" => Scale::Two(60),
        _ => {
            // `e`/`E` followed by a signed integer; a lone `E` is exa (above).
            let exponent = suffix.strip_prefix(['e', 'E'])?;
            let digits = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            Scale::Ten(exponent.parse().ok()?)
        }
    })
}

/// The largest quantity with a binary suffix: apimachinery caps those at 2^63-1.
const MAX_BINARY: f64 = i64::MAX as f64;

/// Parses a quantity into its value in base units (so `500m` is 0.5 and `1Ki` is 1024).
/// Surrounding white space is ignored, as apimachinery ignores it when it decodes an object.
pub fn parse(quantity: &str) -> Result<f64, QuantityError> {
    let err = |reason| QuantityError {
        input: quantity.to_string(),
        reason,
    };
    let input = quantity.trim();
    if input.is_empty() {
        return Err(err("empty"));
    }
    let unsigned = input.strip_prefix(['+', '-']).unwrap_or(input);
    let number_len = unsigned
        .bytes()
        .take_while(|b| b.is_ascii_digit() || *b == b'.')
        .count();
    let (number, suffix) = unsigned.split_at(number_len);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() {
        return Err(err(
            "no number; a quantity starts with digits, as in 8, 500m or 16Gi",
        ));
    }
    if fraction.contains('.') {
        return Err(err("more than one decimal point"));
    }
    let scale = suffix_scale(suffix).ok_or_else(|| {
        err("unknown suffix; use one of n, u, m, k, M, G, T, P, E, Ki, Mi, Gi, Ti, Pi, Ei or an exponent such as e3")
    })?;
    let sign = if input.starts_with('-') { "-" } else { "" };
    let whole = if whole.is_empty() { "0" } else { whole };
    let fraction = if fraction.is_empty() { "0" } else { fraction };
    let value = match scale {
        // Parsed with the exponent in the text, so that `1.1k` is exactly 1100.
        Scale::Ten(exponent) => format!("{sign}{whole}.{fraction}e{exponent}").parse::<f64>(),
        Scale::Two(exponent) => format!("{whole}.{fraction}")
            .parse::<f64>()
            .map(|v| (v * 2f64.powi(exponent)).min(MAX_BINARY))
            .map(|v| if sign == "-" { -v } else { v }),
    }
    .map_err(|_| err("not a number"))?;
    if !value.is_finite() {
        return Err(err("too large"));
    }
    Ok(value)
}

/// A quantity as it appears in an object: a string, or a JSON number (which manifests and
/// forged reviews may carry, and the policies accept too).
pub fn from_json(value: &Json) -> Result<f64, QuantityError> {
    match value {
        Json::String(s) => parse(s),
        Json::Number(n) => n.as_f64().filter(|v| v.is_finite()).ok_or(QuantityError {
            input: n.to_string(),
            reason: "too large",
        }),
        other => Err(QuantityError {
            input: other.to_string(),
            reason: "neither a string nor a number",
        }),
    }
}

/// A number as JSON, integral when it is whole so that policies and messages show `8`, not `8.0`.
pub fn to_json(value: f64) -> serde_json::Value {
    if value.fract() == 0.0 && value.abs() < 9.0e15 {
        serde_json::Value::from(value as i64)
    } else {
        serde_json::Value::from(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every suffix of the grammar, and the number forms it allows.
    #[test]
    fn parses_every_suffix_and_number_form() {
        let cases: &[(&str, f64)] = &[
            ("20", 20.0),
            ("0", 0.0),
            ("1n", 1e-9),
            ("5u", 5e-6),
            ("500m", 0.5),
            ("2k", 2000.0),
            ("1k", 1000.0),
            ("3M", 3e6),
            ("4G", 4e9),
            ("5T", 5e12),
            ("6P", 6e15),
            ("7E", 7e18),
            ("1Ki", 1024.0),
            ("2Mi", 2.0 * 1024f64.powi(2)),
            ("16Gi", 16.0 * 1024f64.powi(3)),
            ("1Ti", 1024f64.powi(4)),
            ("1Pi", 1024f64.powi(5)),
            ("1Ei", 1024f64.powi(6)),
            ("1e3", 1000.0),
            ("1E3", 1000.0),
            ("1e+3", 1000.0),
            ("15e-1", 1.5),
            ("1.5", 1.5),
            ("1.", 1.0),
            (".5", 0.5),
            ("+8", 8.0),
            ("-1", -1.0),
            ("1.1k", 1100.0),
            ("0.5Gi", 512.0 * 1024.0 * 1024.0),
            (" 1", 1.0),
            ("2 ", 2.0),
            ("50Ei", i64::MAX as f64),
            ("0E123456", 0.0),
        ];
        for (input, want) in cases {
            assert_eq!(parse(input), Ok(*want), "{input}");
        }
    }

    #[test]
    fn rejects_what_kubernetes_rejects_with_a_reason() {
        for input in [
            "",
            " ",
            "abc",
            "3 GPUs",
            "1 k",
            "1x",
            "1e",
            "1ki",
            "1KI",
            "1.2.3",
            ".",
            "+",
            "1e1.5",
            "1ee3",
            "--1",
            "1Mi3",
            "k",
            "1e400",
            "1E1000000",
        ] {
            let e = parse(input).expect_err(input);
            assert!(e.to_string().contains(&format!("{input:?}")), "{e}");
        }
    }

    #[test]
    fn numbers_in_json_are_quantities_too() {
        assert_eq!(from_json(&serde_json::json!(4)), Ok(4.0));
        assert_eq!(from_json(&serde_json::json!("2k")), Ok(2000.0));
        assert!(from_json(&serde_json::json!(true)).is_err());
        assert!(from_json(&serde_json::json!("1x")).is_err());
    }

    #[test]
    fn whole_numbers_stay_integers() {
        assert_eq!(to_json(8.0).to_string(), "8");
        assert_eq!(to_json(0.5).to_string(), "0.5");
    }
}
