//! What every stage shares about a trip event: its kinds, fields and Arrow schemas
//! ([`event`]), and exact, fast conversions between their text and Arrow values
//! ([`decimal`], [`timestamp`], with what the two share in [`cast`]), and the fields an
//! event carries that no field of the registry names ([`extra`]).

pub mod cast;
pub mod decimal;
pub mod declared;
pub mod event;
pub mod extra;
pub mod rules;
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

/// Appends `value` as a LEB128 varint: seven bits a byte, the low ones first, the high
/// bit set on every byte but the last. The LSM table's stored values and produce's
/// packed rows write their lengths and integers this way.
pub(crate) fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Reads the LEB128 varint at the front of `rest` and moves past it; `None` when the
/// bytes end first or it runs past 64 bits.
pub(crate) fn take_varint(rest: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, after) = rest.split_first()?;
        *rest = after;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}
