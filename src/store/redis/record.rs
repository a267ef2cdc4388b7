//! The packed session records the Redis scripts keep: their constants (the format byte, the
//! flags, the status and reason codes), which the scripts get from here (`lua_constants`),
//! and the reader of what lib.lua's `pack_record` writes.

use thiserror::Error;

use crate::domain::{Attributes, Reason, RecentReports, ReportId, SessionId, SessionState, Status};

/// The format byte that opens a packed record (lib.lua's format 2).
const COMPACT: u8 = 2;

/// Where the flags byte is (1-based, as Lua counts): after the format byte and the id.
const FLAGS_AT: usize = 2 + SessionId::BYTES;

/// A record's status and start reason are stored as their index here.
const STATUSES: [Status; 5] = [
    Status::Ok,
    Status::Exited,
    Status::Errored,
    Status::Abnormal,
    Status::Crashed,
];
const REASONS: [Reason; 5] = [
    Reason::NewClient,
    Reason::IdleTimeout,
    Reason::MaxDuration,
    Reason::Ended,
    Reason::UserChange,
];

/// The flags: which optional parts a record holds, and whether it is finalized.
const PREVIOUS: u8 = 1;
const BACKGROUND: u8 = 2;
const ENDED: u8 = 4;
const ERRORS: u8 = 8;
const FINALIZED: u8 = 16;
const REPORTS: u8 = 32;

#[derive(Debug, Error)]
#[error("stored session: {0}")]
pub struct BadRecord(String);

/// The record's constants as Lua locals, put before the scripts that read or write records:
/// FORMAT, FLAGS_AT, ID_BYTES and FLAG_*, and with `codes`, STATUS and REASON (code -> name,
/// from 0). The hot script leaves the codes out: it never reads them, and a table costs a
/// script on every call.
pub fn lua_constants(codes: bool) -> String {
    let flags = [
        ("PREVIOUS", PREVIOUS),
        ("BACKGROUND", BACKGROUND),
        ("ENDED", ENDED),
        ("ERRORS", ERRORS),
        ("FINALIZED", FINALIZED),
        ("REPORTS", REPORTS),
    ];
    let names: Vec<String> = flags.iter().map(|(n, _)| format!("FLAG_{n}")).collect();
    let values: Vec<String> = flags.iter().map(|(_, v)| v.to_string()).collect();
    let mut lua = format!(
        "local FORMAT, FLAGS_AT, ID_BYTES = {COMPACT}, {FLAGS_AT}, {}\nlocal {} =\n  {}\n",
        SessionId::BYTES,
        names.join(", "),
        values.join(", ")
    );
    if codes {
        let table = |names: Vec<&str>| format!("{{[0] = '{}'}}", names.join("', '"));
        lua += &format!(
            "local STATUS = {}\nlocal REASON = {}\n",
            table(STATUSES.iter().map(|s| s.as_str()).collect()),
            table(REASONS.iter().map(|r| r.as_str()).collect()),
        );
    }
    lua
}

/// Reads one record.
pub fn parse(raw: &[u8]) -> Result<SessionState, BadRecord> {
    match raw.first() {
        Some(&COMPACT) => Reader { raw, at: 1 }.compact(),
        _ => Err(BadRecord("unknown record format".into())),
    }
}

struct Reader<'a> {
    raw: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], BadRecord> {
        let end = self.at.checked_add(n).filter(|&end| end <= self.raw.len());
        let end = end.ok_or_else(|| BadRecord(format!("cut short at byte {}", self.at)))?;
        let bytes = &self.raw[self.at..end];
        self.at = end;
        Ok(bytes)
    }

    /// A big-endian unsigned integer of `n` bytes.
    fn number(&mut self, n: usize) -> Result<u64, BadRecord> {
        Ok(self
            .bytes(n)?
            .iter()
            .fold(0, |v, &b| (v << 8) | u64::from(b)))
    }

    fn time(&mut self) -> Result<i64, BadRecord> {
        // Six bytes always fit.
        Ok(self.number(6)? as i64)
    }

    /// A string after its length in `len_bytes` bytes; `None` when empty.
    fn text(&mut self, len_bytes: usize) -> Result<Option<String>, BadRecord> {
        let len = self.number(len_bytes)? as usize;
        let bytes = self.bytes(len)?;
        let text = std::str::from_utf8(bytes).map_err(|e| BadRecord(e.to_string()))?;
        Ok(Some(text.to_owned()).filter(|t| !t.is_empty()))
    }

    /// A session id's bytes.
    fn id(&mut self) -> Result<SessionId, BadRecord> {
        let bytes = self.bytes(SessionId::BYTES)?;
        Ok(SessionId::from_bytes(
            bytes.try_into().expect("read as many bytes as an id has"),
        ))
    }

    fn attributes(&mut self) -> Result<Attributes, BadRecord> {
        Ok(Attributes {
            release: self.text(2)?,
            environment: self.text(2)?,
            platform: self.text(2)?,
            user_id: self.text(2)?,
        })
    }

    /// Optional parts are there when their flag is.
    fn compact(mut self) -> Result<SessionState, BadRecord> {
        let id = self.id()?;
        let flags = self.number(1)? as u8;
        let has = |flag: u8| flags & flag != 0;
        let previous = if has(PREVIOUS) {
            Some(self.id()?)
        } else {
            None
        };
        let index = self.number(4)?;
        let started_at = self.time()?;
        let last_activity_at = self.time()?;
        let _pointer_expires_at = self.time()?;
        // Times and the error count alike take six bytes.
        let mut optional = |flag: u8| -> Result<Option<i64>, BadRecord> {
            if has(flag) {
                self.time().map(Some)
            } else {
                Ok(None)
            }
        };
        let background_since = optional(BACKGROUND)?;
        let ended_at = optional(ENDED)?;
        let errors = optional(ERRORS)?.unwrap_or(0) as u64;
        let code = self.number(1)? as usize;
        let attributes = self.attributes()?;
        let mut reports = RecentReports::default();
        if has(REPORTS) {
            for _ in 0..self.number(1)? {
                let bytes = self.bytes(ReportId::BYTES)?;
                reports.remember(ReportId::from_bytes(
                    bytes
                        .try_into()
                        .expect("read as many bytes as a report id has"),
                ));
            }
        }
        Ok(SessionState {
            id,
            index,
            previous,
            started_at,
            last_activity_at,
            background_since,
            ended_at,
            status: status(code / 16)?,
            errors,
            finalized: has(FINALIZED),
            reason: reason(code % 16)?,
            attributes,
            reports,
        })
    }
}

fn status(code: usize) -> Result<Status, BadRecord> {
    STATUSES
        .get(code)
        .copied()
        .ok_or_else(|| BadRecord(format!("status {code}")))
}

fn reason(code: usize) -> Result<Reason, BadRecord> {
    REASONS
        .get(code)
        .copied()
        .ok_or_else(|| BadRecord(format!("reason {code}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record as lib.lua's pack_record writes it (checked against Redis by the store tests),
    /// with every optional part.
    fn compact() -> Vec<u8> {
        let mut raw = vec![COMPACT];
        raw.extend_from_slice(&hex::decode("1454552aede69aa12d19").unwrap());
        raw.push(PREVIOUS | BACKGROUND | ENDED | ERRORS | FINALIZED | REPORTS);
        raw.extend_from_slice(&hex::decode("00ff00ff00ff00ff00ff").unwrap());
        raw.extend_from_slice(&3u32.to_be_bytes());
        // Started, last activity, pointer expiry, background since, ended, errors.
        for n in [
            1_795_569_300_539u64,
            1_795_569_300_600,
            5,
            1_795_569_300_550,
            1_795_569_300_700,
            2,
        ] {
            raw.extend_from_slice(&n.to_be_bytes()[2..]);
        }
        raw.push(2 * 16 + 1); // errored, idle_timeout
        for value in ["1.2.3", "", "", "u"] {
            raw.extend_from_slice(&(value.len() as u16).to_be_bytes());
            raw.extend_from_slice(value.as_bytes());
        }
        raw.push(2);
        raw.extend_from_slice(&[1; ReportId::BYTES]);
        raw.extend_from_slice(&[2; ReportId::BYTES]);
        raw
    }

    #[test]
    fn reads_a_compact_record() {
        let session = parse(&compact()).unwrap();
        assert_eq!(
            session.previous.as_ref().map(SessionId::as_str),
            Some("00ff00ff00ff00ff00ff")
        );
        assert_eq!(session.background_since, Some(1_795_569_300_550));
        assert_eq!(session.ended_at, Some(1_795_569_300_700));
        let reports: Vec<_> = session.reports.iter().map(|r| r.as_bytes()[0]).collect();
        assert_eq!(reports, [1, 2]);
        assert_eq!(session.id.as_str(), "1454552aede69aa12d19");
        assert_eq!(session.index, 3);
        assert_eq!(session.started_at, 1_795_569_300_539);
        assert_eq!(session.last_activity_at, 1_795_569_300_600);
        assert_eq!(session.errors, 2);
        assert_eq!(session.status, Status::Errored);
        assert_eq!(session.reason, Reason::IdleTimeout);
        assert!(session.finalized);
        assert_eq!(session.attributes.release.as_deref(), Some("1.2.3"));
        assert_eq!(session.attributes.environment, None);
        assert_eq!(session.attributes.user_id.as_deref(), Some("u"));
    }

    #[test]
    fn a_compact_record_without_optional_parts_has_none() {
        let mut raw = vec![COMPACT];
        raw.extend_from_slice(&[7; SessionId::BYTES]);
        raw.push(0);
        raw.extend_from_slice(&[0, 0, 0, 1]);
        raw.extend_from_slice(&[0; 18]);
        raw.push(0);
        raw.extend_from_slice(&[0; 8]);
        let session = parse(&raw).unwrap();
        assert_eq!(session.id.as_str(), "07070707070707070707");
        assert_eq!((session.previous, session.index), (None, 1));
        assert_eq!((session.background_since, session.ended_at), (None, None));
        assert_eq!((session.errors, session.finalized), (0, false));
        assert_eq!(
            (session.status, session.reason),
            (Status::Ok, Reason::NewClient)
        );
    }

    #[test]
    fn the_scripts_get_the_layout_and_the_codes_from_here() {
        let lua = lua_constants(true);
        assert!(
            lua.starts_with("local FORMAT, FLAGS_AT, ID_BYTES = 2, 12, 10\n"),
            "{lua}"
        );
        assert!(
            lua.contains(
                "local FLAG_PREVIOUS, FLAG_BACKGROUND, FLAG_ENDED, FLAG_ERRORS, FLAG_FINALIZED, \
                 FLAG_REPORTS =\n  1, 2, 4, 8, 16, 32\n"
            ),
            "{lua}"
        );
        assert!(
            lua.contains(
                "local STATUS = {[0] = 'ok', 'exited', 'errored', 'abnormal', 'crashed'}\n"
            )
        );
        assert!(lua.contains(
            "local REASON = {[0] = 'new_client', 'idle_timeout', 'max_duration', 'ended', 'user_change'}\n"
        ));
        assert!(!lua_constants(false).contains("STATUS"));
        // A status and a reason read back as the code they were stored as.
        for (code, s) in STATUSES.iter().enumerate() {
            assert_eq!(status(code).unwrap(), *s);
        }
        for (code, r) in REASONS.iter().enumerate() {
            assert_eq!(reason(code).unwrap(), *r);
        }
        assert!(status(STATUSES.len()).is_err() && reason(REASONS.len()).is_err());
    }

    #[test]
    fn a_cut_record_is_an_error_not_a_panic() {
        let raw = compact();
        for len in 0..raw.len() {
            assert!(parse(&raw[..len]).is_err(), "cut at {len}");
        }
    }
}
