//! Tags of the tagged transports (ucx, ofi): 4 bits of kind, 32 of request,
//! 28 of message index, so a receive can match a kind and check the rest.

use crate::error::{Error, Result};

pub type Tag = u64;

pub const GO: Tag = 1;
pub const DONE: Tag = 2;
pub const DATA: Tag = 3;
pub const HELLO: Tag = 4;
/// The bytes a software copy moved are in place (ofi shm on GPU memory).
pub const LANDED: Tag = 5;
/// The sender's emulated prefill has ended: a pulling receiver may read.
pub const COMPUTED: Tag = 6;
pub const KIND: Tag = 0xf << 60;
pub const MAX_MESSAGES: usize = 1 << 28;

pub fn make(kind: Tag, request: u64, index: usize) -> Tag {
    kind << 60 | (request & 0xffff_ffff) << 28 | index as Tag & 0x0fff_ffff
}

pub fn request(t: Tag) -> u64 {
    (t >> 28) & 0xffff_ffff
}

pub fn index(t: Tag) -> usize {
    (t & 0x0fff_ffff) as usize
}

/// The peer's signal names another request than this side's.
pub fn check_request(got: u64, expected: u64, did: &str) -> Result<()> {
    if got != expected & 0xffff_ffff {
        // A tag holds the id's low half: the request in its point.
        let got = crate::plan::Req(expected & !0xffff_ffff | got);
        return Err(Error::integrity(format!(
            "the peer {did} {got}, expected {}",
            crate::plan::Req(expected)
        )));
    }
    Ok(())
}

/// A plan with more messages per request than the tags can number.
pub fn check_messages(max_messages: usize, transport: &str) -> Result<()> {
    if max_messages > MAX_MESSAGES {
        return Err(Error::usage(format!(
            "{max_messages} messages per request: {transport} numbers at most {MAX_MESSAGES} (use a coarser granularity)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_carry_kind_request_and_index() {
        let t = make(DATA, 0x1_2345_6789, 0x0abc_def0);
        assert_eq!(t & KIND, DATA << 60);
        assert_eq!(request(t), 0x2345_6789);
        assert_eq!(index(t), 0x0abc_def0);
        assert_ne!(make(GO, 7, 0) & KIND, make(DONE, 7, 0) & KIND);
    }
}
