//! The soak run (filled in below).
