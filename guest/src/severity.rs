//! Secure Endpoint severities and the one place they map onto XDR and ServiceNow.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    /// Case-insensitive, surrounding blanks ignored; `None` for anything else.
    pub fn parse(s: &str) -> Option<Severity> {
        match s.trim().to_ascii_lowercase().as_str() {
            "low" => Some(Severity::Low),
            "medium" => Some(Severity::Medium),
            "high" => Some(Severity::High),
            "critical" => Some(Severity::Critical),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "Low",
            Severity::Medium => "Medium",
            Severity::High => "High",
            Severity::Critical => "Critical",
        }
    }
}

/// How an incident of this severity is rated upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rating {
    /// CTIA `severity`.
    pub xdr: &'static str,
    /// ServiceNow `impact` and `urgency` (1 high … 3 low).
    pub snow_impact: &'static str,
    pub snow_urgency: &'static str,
}

/// The single severity mapping of the bridge. An event without a severity is rated as
/// Medium urgency with an `Unknown` XDR severity, so it is neither buried nor escalated.
pub fn rating(severity: Option<Severity>) -> Rating {
    let (xdr, snow_impact, snow_urgency) = match severity {
        Some(Severity::Critical) => ("Critical", "1", "1"),
        Some(Severity::High) => ("High", "1", "2"),
        Some(Severity::Medium) => ("Medium", "2", "2"),
        Some(Severity::Low) => ("Low", "3", "3"),
        None => ("Unknown", "2", "2"),
    };
    Rating {
        xdr,
        snow_impact,
        snow_urgency,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_messy_spellings() {
        assert_eq!(Severity::parse(" high "), Some(Severity::High));
        assert_eq!(Severity::parse("CRITICAL"), Some(Severity::Critical));
        assert_eq!(Severity::parse(""), None);
        assert_eq!(Severity::parse("urgent"), None);
    }

    #[test]
    fn maps_in_one_place() {
        assert_eq!(rating(Some(Severity::Critical)).snow_impact, "1");
        assert_eq!(rating(Some(Severity::Critical)).snow_urgency, "1");
        assert_eq!(rating(Some(Severity::Low)).xdr, "Low");
        assert_eq!(rating(None).xdr, "Unknown");
        assert!(Severity::Critical > Severity::High && Severity::Medium > Severity::Low);
    }
}
