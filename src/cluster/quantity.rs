//! Kubernetes resource quantities (`"8"`, `500m`, `16Gi`, `2k`, `1e3`) as numbers.

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{input:?} is not a Kubernetes quantity: {reason}")]
pub struct QuantityError {
    pub input: String,
    pub reason: &'static str,
}

/// Parses a quantity into its value in base units (so `500m` is 0.5 and `1Ki` is 1024).
pub fn parse(input: &str) -> Result<f64, QuantityError> {
    let err = |reason| QuantityError {
        input: input.to_string(),
        reason,
    };
    let s = input.trim();
    if s.is_empty() {
        return Err(err("empty"));
    }
    let number_end = s
        .char_indices()
        .find(|&(i, c)| !(c.is_ascii_digit() || c == '.' || ((c == '+' || c == '-') && i == 0)))
        .map_or(s.len(), |(i, _)| i);
    let (number, suffix) = s.split_at(number_end);
    let value: f64 = number.parse().map_err(|_| err("no leading number"))?;
    let multiplier = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exp if exp.starts_with(['e', 'E']) => {
            let e: i32 = exp[1..].parse().map_err(|_| err("bad exponent"))?;
            10f64.powi(e)
        }
        _ => {
            return Err(err(
                "unknown suffix; use one of m, k, M, G, Ki, Mi, Gi, ...",
            ))
        }
    };
    Ok(value * multiplier)
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

    #[test]
    fn parses_the_forms_kubectl_prints() {
        assert_eq!(parse("20").unwrap(), 20.0);
        assert_eq!(parse("2k").unwrap(), 2000.0);
        assert_eq!(parse("500m").unwrap(), 0.5);
        assert_eq!(parse("1Ki").unwrap(), 1024.0);
        assert_eq!(parse("16Gi").unwrap(), 16.0 * 1024.0 * 1024.0 * 1024.0);
        assert_eq!(parse("1e3").unwrap(), 1000.0);
        assert_eq!(parse("1.5").unwrap(), 1.5);
    }

    #[test]
    fn rejects_garbage_with_a_reason() {
        assert!(parse("").is_err());
        assert!(parse("abc").is_err());
        let e = parse("3 GPUs").unwrap_err();
        assert!(e.to_string().contains("3 GPUs"));
    }

    #[test]
    fn whole_numbers_stay_integers() {
        assert_eq!(to_json(8.0).to_string(), "8");
        assert_eq!(to_json(0.5).to_string(), "0.5");
    }
}
