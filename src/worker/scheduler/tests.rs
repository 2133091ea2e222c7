//! Specs of the scheduler core, driven with a manual clock.
