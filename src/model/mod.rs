//! What every stage shares about a trip event: its kinds, fields and Arrow schemas
//! ([`event`]), and exact, fast conversions between their text and Arrow values
//! ([`decimal`], [`timestamp`], with what the two share in [`cast`]).

pub mod cast;
pub mod decimal;
pub mod event;
pub mod timestamp;
