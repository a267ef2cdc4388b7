//! Fuzzes the request decoding and validation layer: any bytes, as the body of any session
//! call or of a batch, must decode and validate to a call or to a problem, never panic, and
//! every problem must render as a bounded problem+json document.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sessiond::domain::{EventId, SessionId};
use sessiond::http::body::{decode, decode_operation};
use sessiond::http::problem::ApiError;
use sessiond::http::sessions::{BatchBody, CallBody, OpName, validate_call};

const OPS: [OpName; 6] = [
    OpName::Current,
    OpName::Tick,
    OpName::Foreground,
    OpName::Background,
    OpName::End,
    OpName::Report,
];

/// A problem echoes caller text only cut short, so its document stays small.
fn check_problem(error: ApiError) {
    let problem = error.problem();
    assert!(
        problem.detail.len() <= 2048,
        "detail of {} bytes",
        problem.detail.len()
    );
    assert!((400..600).contains(&problem.status));
    serde_json::to_vec(&problem).expect("a problem always serializes");
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let min_client_length = 1 + usize::from(selector >> 4);
    if selector & 0x08 == 0 {
        let op = OPS[usize::from(selector & 0x07) % OPS.len()];
        match decode::<CallBody>(body)
            .and_then(|call| validate_call(op, call, min_client_length, ""))
        {
            Ok(_) => {}
            Err(e) => check_problem(e),
        }
    } else {
        match decode::<BatchBody>(body) {
            Ok(batch) => {
                for (i, value) in batch.operations.into_iter().enumerate() {
                    let place = format!("operations[{i}]");
                    let valid =
                        decode_operation::<CallBody>(&value, &place).and_then(|call| match call.op {
                            Some(op) => {
                                validate_call(op, call, min_client_length, &format!("{place}."))
                            }
                            None => Err(ApiError::invalid(format!("{place}.op"), "is required")),
                        });
                    if let Err(e) = valid {
                        check_problem(e);
                    }
                }
            }
            Err(e) => check_problem(e),
        }
    }
    // The other caller-written strings: a lookup's session id and an events cursor.
    if let Ok(text) = std::str::from_utf8(body) {
        let _ = SessionId::parse(text);
        let _ = text.parse::<EventId>();
    }
});
