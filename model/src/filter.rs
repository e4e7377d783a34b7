//! The one line filter used by history, live streams and exports.

use regex::Regex;

use crate::{Level, LevelSet, LogRecord, Stream, time};

/// Which lines a viewer wants. The default matches every line.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Levels to keep. Default: all.
    pub levels: LevelSet,
    /// Steps to keep; empty keeps every step.
    pub steps: Vec<String>,
    /// Streams to keep; `None` keeps both.
    pub stream: Option<Stream>,
    /// Keep lines with `ts >= since` (Unix nanoseconds).
    pub since: Option<i64>,
    /// Keep lines with `ts < until` (Unix nanoseconds).
    pub until: Option<i64>,
    /// Keep lines whose message matches this regular expression.
    pub query: Option<Regex>,
}

/// Why a filter parameter was refused; names the parameter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error(
        "level {0:?} is not a level; use trace, debug, info, warn, error, fatal or unknown, a list (warn,error) or a floor (warn+)"
    )]
    Level(String),
    #[error("stream {0:?} is not a stream; use stdout or stderr")]
    Stream(String),
    #[error(
        "{param} {value:?} is not a time; use RFC 3339 (2024-01-02T03:04:05Z), a duration ago (10m, 2h) or Unix seconds"
    )]
    Time { param: &'static str, value: String },
    #[error("q is not a valid regular expression: {0}")]
    Query(String),
    #[error("since is after until; nothing can match")]
    EmptyRange,
}

/// Query-string parameters of a filter, as strings, before validation.
#[derive(Debug, Clone, Default)]
pub struct FilterParams<'a> {
    pub level: Option<&'a str>,
    pub step: Option<&'a str>,
    pub stream: Option<&'a str>,
    pub since: Option<&'a str>,
    pub until: Option<&'a str>,
    pub q: Option<&'a str>,
}

impl Filter {
    /// Builds a filter from query parameters; `now` resolves relative times (`since=10m`).
    /// `step` may list several steps separated by commas.
    /// `stream` may list both streams (`stdout,stderr`), which keeps every line.
    pub fn parse(p: &FilterParams<'_>, now: i64) -> Result<Filter, FilterError> {
        let mut f = Filter::default();
        if let Some(level) = p.level.filter(|s| !s.is_empty()) {
            f.levels =
                LevelSet::parse(level).ok_or_else(|| FilterError::Level(level.to_owned()))?;
        }
        if let Some(step) = p.step.filter(|s| !s.is_empty()) {
            f.steps = step
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect();
        }
        if let Some(list) = p.stream.filter(|s| !s.is_empty()) {
            // One stream, or a list: both streams is no stream filter at all.
            let mut seen = [false; 2];
            for s in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                match Stream::parse(s).ok_or_else(|| FilterError::Stream(s.to_owned()))? {
                    Stream::Stdout => seen[0] = true,
                    Stream::Stderr => seen[1] = true,
                }
            }
            f.stream = match seen {
                [true, false] => Some(Stream::Stdout),
                [false, true] => Some(Stream::Stderr),
                _ => None,
            };
        }
        let time = |param: &'static str, v: Option<&str>| -> Result<Option<i64>, FilterError> {
            match v.filter(|s| !s.is_empty()) {
                None => Ok(None),
                Some(v) => time::parse_time(v, now)
                    .map(Some)
                    .ok_or_else(|| FilterError::Time {
                        param,
                        value: v.to_owned(),
                    }),
            }
        };
        f.since = time("since", p.since)?;
        f.until = time("until", p.until)?;
        if let (Some(s), Some(u)) = (f.since, f.until)
            && s > u
        {
            return Err(FilterError::EmptyRange);
        }
        if let Some(q) = p.q.filter(|s| !s.is_empty()) {
            let re = regex::RegexBuilder::new(q)
                .size_limit(1 << 20)
                .build()
                .map_err(|e| FilterError::Query(e.to_string()))?;
            f.query = Some(re);
        }
        Ok(f)
    }

    /// True when the filter keeps every line (lets readers skip per-line checks).
    pub fn is_all(&self) -> bool {
        self.levels == LevelSet::ALL
            && self.steps.is_empty()
            && self.stream.is_none()
            && self.since.is_none()
            && self.until.is_none()
            && self.query.is_none()
    }

    /// Whether `record` passes every part of the filter.
    pub fn matches(&self, record: &LogRecord) -> bool {
        self.levels.contains(record.level)
            && (self.steps.is_empty() || self.steps.contains(&record.step))
            && self.stream.is_none_or(|s| s == record.stream)
            && self.since.is_none_or(|s| record.ts >= s)
            && self.until.is_none_or(|u| record.ts < u)
            && self
                .query
                .as_ref()
                .is_none_or(|q| q.is_match(&record.message))
    }

    /// Whether a block whose lines have these summary properties may contain a
    /// matching line. `false` means the block can be skipped without reading it.
    pub fn may_match_block(
        &self,
        levels: LevelSet,
        streams: u8,
        min_ts: i64,
        max_ts: i64,
        mut has_step: impl FnMut(&str) -> bool,
    ) -> bool {
        levels.intersects(self.levels)
            && self.stream.is_none_or(|s| streams & (1 << s.code()) != 0)
            && self.since.is_none_or(|s| max_ts >= s)
            && self.until.is_none_or(|u| min_ts < u)
            && (self.steps.is_empty() || self.steps.iter().any(|s| has_step(s)))
    }

    /// Levels this filter keeps, for callers that build their own summaries.
    pub fn keeps_level(&self, level: Level) -> bool {
        self.levels.contains(level)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_may_be_a_list_and_both_streams_keep_everything() {
        let f = |v: &str| {
            Filter::parse(
                &FilterParams {
                    stream: Some(v),
                    ..FilterParams::default()
                },
                0,
            )
        };
        assert_eq!(f("stderr").unwrap().stream, Some(Stream::Stderr));
        assert_eq!(f("stderr,stderr").unwrap().stream, Some(Stream::Stderr));
        assert!(f("stdout,stderr").unwrap().is_all());
        assert_eq!(
            f("stdout,bogus").unwrap_err(),
            FilterError::Stream("bogus".into())
        );
    }

    #[test]
    fn bad_parameters_name_themselves() {
        let err = |p: FilterParams<'_>| Filter::parse(&p, 0).unwrap_err().to_string();
        assert!(
            err(FilterParams {
                level: Some("loud"),
                ..Default::default()
            })
            .starts_with("level")
        );
        assert!(
            err(FilterParams {
                stream: Some("stdin"),
                ..Default::default()
            })
            .starts_with("stream")
        );
        assert!(
            err(FilterParams {
                since: Some("yesterday"),
                ..Default::default()
            })
            .starts_with("since")
        );
        assert!(
            err(FilterParams {
                q: Some("("),
                ..Default::default()
            })
            .starts_with("q ")
        );
        assert!(
            err(FilterParams {
                since: Some("2h"),
                until: Some("3h"),
                ..Default::default()
            })
            .contains("after")
        );
    }
}
