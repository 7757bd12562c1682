//! `--metrics` and `--tag-keys`: globs choosing which metrics are sent and which tag keys they
//! carry (int128's `metrics-patterns` and `tag-key-patterns`). Every distinct metric and tag set
//! is a custom metric on the user's Datadog bill, so dropping a metric or a high-cardinality tag
//! (`branch`, `job_name`) is how they control the cost.

use wildmatch::WildMatch;

/// Comma-separated globs (`*` any text, `?` one character); those starting with `!` exclude.
/// A name is chosen when it matches an include (or there are none) and no exclude.
#[derive(Clone, Debug, Default)]
pub struct Patterns {
    include: Vec<WildMatch>,
    exclude: Vec<WildMatch>,
    /// As given, for the run log.
    text: String,
}

impl Patterns {
    /// Parses each argument (repeated flags, or one with commas).
    ///
    /// # Errors
    /// An empty pattern, or a `!` with nothing after it.
    pub fn parse(specs: &[String]) -> Result<Patterns, String> {
        let mut patterns = Patterns::default();
        for pattern in specs.iter().flat_map(|spec| spec.split(',')).map(str::trim) {
            match pattern.strip_prefix('!') {
                Some("") => return Err("a lone ! excludes nothing: write !PATTERN".to_owned()),
                Some(excluded) => patterns.exclude.push(WildMatch::new(excluded)),
                None if pattern.is_empty() => return Err("an empty pattern (two commas, or one at an end)".to_owned()),
                None => patterns.include.push(WildMatch::new(pattern)),
            }
        }
        patterns.text = specs.join(",");
        Ok(patterns)
    }

    #[must_use]
    pub fn matches(&self, name: &str) -> bool {
        (self.include.is_empty() || self.include.iter().any(|glob| glob.matches(name)))
            && !self.exclude.iter().any(|glob| glob.matches(name))
    }

    /// Whether every name is chosen (no pattern given).
    #[must_use]
    pub fn is_all(&self) -> bool {
        self.include.is_empty() && self.exclude.is_empty()
    }

    /// The include globs that match none of `names`: most likely typing mistakes.
    pub fn unmatched<'a>(&'a self, names: &'a [String]) -> impl Iterator<Item = String> + 'a {
        self.include.iter().filter(move |glob| !names.iter().any(|name| glob.matches(name))).map(ToString::to_string)
    }
}

impl std::fmt::Display for Patterns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.text.is_empty() { "*" } else { &self.text })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patterns(text: &str) -> Patterns {
        Patterns::parse(&[text.to_owned()]).unwrap()
    }

    #[test]
    fn includes_then_excludes() {
        let chosen = patterns("workflow_run.*,job.*,!*.conclusion.*");
        assert!(chosen.matches("workflow_run.total") && chosen.matches("job.duration_second"));
        assert!(!chosen.matches("workflow_run.conclusion.failure_total") && !chosen.matches("step.total"));
        let all_but = patterns("!branch");
        assert!(all_but.matches("repository_name") && !all_but.matches("branch"));
        assert!(Patterns::default().matches("anything") && Patterns::default().is_all());
        assert!(Patterns::parse(&["a,,b".to_owned()]).is_err() && Patterns::parse(&["!".to_owned()]).is_err());
        let names = vec!["job.total".to_owned()];
        assert_eq!(patterns("job.*,jobs.*").unmatched(&names).collect::<Vec<_>>(), ["jobs.*"]);
    }
}
