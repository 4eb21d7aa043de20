//! What every stage shares about a trip event: its kinds, fields and Arrow schemas
//! ([`event`]), and exact, fast conversions between their text and Arrow values
//! ([`decimal`], [`timestamp`], with what the two share in [`cast`]).

pub mod cast;
pub mod decimal;
pub mod event;
pub mod timestamp;

/// Writes `value` in decimal into all of `out`, right-aligned and padded with zeros, as
/// `format!("{value:0width$}")` does when the digits fit (the high ones are dropped when
/// they do not). By hand, for the hot paths that write fixed-width numbers: the stored
/// datetimes and the embedded stream's sequence numbers.
pub(crate) fn zero_padded(out: &mut [u8], mut value: u64) {
    let mut at = out.len();
    while at > 0 {
        at -= 1;
        out[at] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    out[..at].fill(b'0');
}
