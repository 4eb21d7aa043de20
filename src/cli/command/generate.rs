//! `tripflow gen`: synthetic input shaped like the real exports.

use crate::Result;
use crate::cli::args::GenArgs;

/// `tripflow gen`.
pub(in crate::cli) fn gen_data(a: &GenArgs) -> Result<()> {
    crate::produce::synthetic::generate_over(a.trips, a.seed, a.days, &a.out)?;
    println!(
        "wrote {} trips to {} and {}",
        a.trips,
        a.out.join("trip_start.csv").display(),
        a.out.join("trip_end.csv").display()
    );
    Ok(())
}
