//! Which seeds a many-seed test runs, from the environment: one seed with
//! `MERIDIAN_SIM_SEED`, else `MERIDIAN_SIM_SEEDS` seeds from
//! `MERIDIAN_SIM_BASE_SEED`; `MERIDIAN_SIM_STEPS` steps each.

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// The seeds and steps per seed the environment asks for, with these
/// defaults where it says nothing.
pub fn seeds_from_env(default_seeds: u64, default_base: u64, default_steps: u64) -> (Vec<u64>, u64) {
    let steps = env_u64("MERIDIAN_SIM_STEPS").unwrap_or(default_steps);
    let seeds = match env_u64("MERIDIAN_SIM_SEED") {
        Some(s) => vec![s],
        None => {
            let n = env_u64("MERIDIAN_SIM_SEEDS").unwrap_or(default_seeds);
            let base = env_u64("MERIDIAN_SIM_BASE_SEED").unwrap_or(default_base);
            (base..base + n).collect()
        }
    };
    (seeds, steps)
}
