//! `tripflow gen`: synthetic `trip_start.csv` / `trip_end.csv` shaped like the real
//! exports: datetimes `YYYY-MM-DD HH:MM:SS`, codes written `1.0`, fares with 14 to 16
//! significant digits, blank optional codes in about a tenth of end rows, trips over
//! several days and some ending after midnight.
//!
//! The same seed gives the same bytes. Rows are written as they are drawn, so memory
//! does not grow with the number of trips.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use chrono::{Duration, NaiveDate, NaiveDateTime};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::{Error, Result};

/// Days the pickups are spread over unless told otherwise.
pub const DAYS: u32 = 3;
const MASK40: u64 = (1 << 40) - 1;

/// The columns of the original lab's `trip_start.csv`, which the rows below follow. A
/// field added to the registry is read when a file has it; these files do not.
const START_CSV_HEADER: &[&str] = &[
    "trip_id",
    "pickup_location_id",
    "dropoff_location_id",
    "vendor_id",
    "pickup_datetime",
    "estimated_dropoff_datetime",
    "estimated_fare_amount",
];

/// The columns of the original lab's `trip_end.csv`.
const END_CSV_HEADER: &[&str] = &[
    "dropoff_datetime",
    "rate_code",
    "passenger_count",
    "trip_distance",
    "fare_amount",
    "tip_amount",
    "payment_type",
    "trip_type",
    "trip_id",
];

/// First day of generated pickups.
pub fn first_day() -> NaiveDate {
    NaiveDate::from_ymd_opt(2024, 5, 24).expect("valid date")
}

/// A 10-hex-digit trip id, distinct for every index below 2^40: a bijection of
/// the 40-bit space (odd multiplications and xor-shifts), offset by the seed.
fn trip_id(index: u64, seed: u64) -> String {
    let mut x = index.wrapping_add(seed.wrapping_mul(0x9E37_79B9)) & MASK40;
    x = x.wrapping_mul(0xD1B5_4A32_D193) & MASK40;
    x ^= x >> 19;
    x = x.wrapping_mul(0x94D0_49BB_1331) & MASK40;
    x ^= x >> 23;
    format!("{x:010x}")
}

fn datetime(t: NaiveDateTime) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

/// Writes `trip_start.csv` and `trip_end.csv` for `trips` trips into `out`, their
/// pickups spread over [`DAYS`] days.
///
/// # Errors
/// When the folder or the files cannot be written.
pub fn generate(trips: u64, seed: u64, out: &Path) -> Result<()> {
    generate_over(trips, seed, DAYS, out)
}

/// [`generate`], with the pickups spread over `days` days from [`first_day`]: the same
/// trips, only further apart. A bigger table at the density of a smaller one keeps as
/// many of each trip's events within one micro-batch.
///
/// # Errors
/// When `days` is 0, or the folder or the files cannot be written.
pub fn generate_over(trips: u64, seed: u64, days: u32, out: &Path) -> Result<()> {
    if days == 0 {
        return Err(Error::config("--days must be at least 1"));
    }
    let fail = |e: std::io::Error| {
        let context = format!("cannot write generated data to {}", out.display());
        crate::error::Stage::Output.error_then(context, e, "choose a writable --out")
    };
    std::fs::create_dir_all(out).map_err(fail)?;
    let mut starts = BufWriter::new(File::create(out.join("trip_start.csv")).map_err(fail)?);
    let mut ends = BufWriter::new(File::create(out.join("trip_end.csv")).map_err(fail)?);
    writeln!(starts, "{}", START_CSV_HEADER.join(",")).map_err(fail)?;
    writeln!(ends, "{}", END_CSV_HEADER.join(",")).map_err(fail)?;

    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let origin = first_day().and_hms_opt(0, 0, 0).expect("midnight");
    let span_secs = i64::from(days) * 86_400;
    for i in 0..trips {
        let id = trip_id(i, seed);
        // Pickups move forward through the days, jittered by up to ten minutes.
        let base = (i as i128 * span_secs as i128 / trips.max(1) as i128) as i64;
        let secs = base + rng.random_range(0..600);
        let pickup = origin + Duration::seconds(secs - secs % 60);
        let planned = Duration::minutes(rng.random_range(4..95));
        let estimated_dropoff = pickup + planned;
        let dropoff = estimated_dropoff + Duration::minutes(rng.random_range(-3..12));
        let dropoff = dropoff.max(pickup + Duration::minutes(1));
        let estimated_fare: f64 = 3.5 + planned.num_minutes() as f64 * rng.random_range(0.6..1.6);
        let fare: f64 = estimated_fare * rng.random_range(0.85..1.35);
        let pickup_zone = rng.random_range(1..=265);
        let dropoff_zone = if rng.random_bool(0.3) { pickup_zone } else { rng.random_range(1..=265) };
        writeln!(
            starts,
            "{id},{pickup_zone},{dropoff_zone},{},{},{},{estimated_fare}",
            rng.random_range(1..=2),
            datetime(pickup),
            datetime(estimated_dropoff),
        )
        .map_err(fail)?;

        let distance = f64::from(rng.random_range(0..300u32)) / 10.0;
        let tip = if rng.random_bool(0.4) { f64::from(rng.random_range(0..2000u32)) / 100.0 } else { 0.0 };
        let codes = if rng.random_bool(0.1) {
            [String::new(), String::new(), String::new(), String::new()]
        } else {
            [
                format!("{:.1}", f64::from(rng.random_range(1..=6u32))),
                format!("{:.1}", f64::from(rng.random_range(0..=6u32))),
                format!("{:.1}", f64::from(rng.random_range(1..=4u32))),
                format!("{:.1}", f64::from(rng.random_range(1..=2u32))),
            ]
        };
        let [rate_code, passengers, payment_type, trip_type] = codes;
        writeln!(
            ends,
            "{},{rate_code},{passengers},{distance:.1},{fare},{tip:.1},{payment_type},{trip_type},{id}",
            datetime(dropoff),
        )
        .map_err(fail)?;
    }
    starts.flush().map_err(fail)?;
    ends.flush().map_err(fail)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn the_lab_headers_are_the_registry_s_columns() {
        use crate::model::event::{EventKind, csv_header};
        // Every lab column is one the reader knows, and every required field is there.
        for (lab, kind) in [(START_CSV_HEADER, EventKind::Start), (END_CSV_HEADER, EventKind::End)] {
            let known = csv_header(kind);
            assert!(lab.iter().all(|c| known.contains(c)), "{lab:?} against {known:?}");
            assert!(kind.fields().iter().filter(|f| f.required).all(|f| lab.contains(&f.csv_header)));
        }
    }

    #[test]
    fn trip_ids_are_distinct() {
        let ids: HashSet<String> = (0..100_000).map(|i| trip_id(i, 7)).collect();
        assert_eq!(ids.len(), 100_000);
        assert!(ids.iter().all(|id| id.len() == 10));
    }

    #[test]
    fn same_seed_same_bytes_and_real_shapes() {
        let (a, b, c) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        generate(2000, 42, a.path()).unwrap();
        generate(2000, 42, b.path()).unwrap();
        generate(2000, 43, c.path()).unwrap();
        let read = |d: &Path, f| std::fs::read_to_string(d.join(f)).unwrap();
        assert_eq!(read(a.path(), "trip_end.csv"), read(b.path(), "trip_end.csv"));
        assert_eq!(read(a.path(), "trip_start.csv"), read(b.path(), "trip_start.csv"));
        assert_ne!(read(a.path(), "trip_end.csv"), read(c.path(), "trip_end.csv"));

        let ends = read(a.path(), "trip_end.csv");
        let rows: Vec<Vec<&str>> = ends.lines().skip(1).map(|l| l.split(',').collect()).collect();
        assert_eq!(rows.len(), 2000);
        let blank = rows.iter().filter(|r| r[1].is_empty()).count();
        assert!((100..300).contains(&blank), "blank codes in {blank} of 2000 rows");
        assert!(rows.iter().filter(|r| !r[1].is_empty()).all(|r| r[1].ends_with(".0")));
        let dates: HashSet<&str> = rows.iter().map(|r| &r[0][..10]).collect();
        assert!(dates.len() >= 3, "{dates:?}");
        assert!(rows.iter().all(|r| r[0].len() == 19 && &r[0][10..11] == " "));
        let starts = read(a.path(), "trip_start.csv");
        let crosses = starts
            .lines()
            .skip(1)
            .zip(ends.lines().skip(1))
            .filter(|(s, e)| s.split(',').nth(4).unwrap()[..10] != e[..10]);
        assert!(crosses.count() > 0, "some trips end after midnight");
    }

    #[test]
    fn days_spread_the_same_trips_further_apart() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        generate(3000, 5, a.path()).unwrap();
        generate_over(3000, 5, 30, b.path()).unwrap();
        let rows = |d: &Path| -> Vec<Vec<String>> {
            let text = std::fs::read_to_string(d.join("trip_start.csv")).unwrap();
            text.lines().skip(1).map(|l| l.split(',').map(str::to_owned).collect()).collect()
        };
        let (three, thirty) = (rows(a.path()), rows(b.path()));
        let ids = |rows: &[Vec<String>]| rows.iter().map(|r| (r[0].clone(), r[6].clone())).collect::<Vec<_>>();
        assert_eq!(ids(&three), ids(&thirty), "the same trips and fares, in the same order");
        let dates = |rows: &[Vec<String>]| rows.iter().map(|r| r[4][..10].to_owned()).collect::<HashSet<_>>();
        // The last pickups are jittered up to ten minutes past the last day.
        assert!((3..=4).contains(&dates(&three).len()));
        let spread = dates(&thirty);
        assert!((30..=31).contains(&spread.len()), "{spread:?}");
        assert!(spread.contains("2024-06-22"), "the 30th day");
        assert!(spread.iter().all(|d| d.as_str() <= "2024-06-23"), "{spread:?}");
        let err = generate_over(10, 5, 0, a.path()).unwrap_err().to_string();
        assert!(err.contains("--days must be at least 1"), "{err}");
    }
}
