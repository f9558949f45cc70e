mod budget;
mod cluster;
mod erasure;
mod pgbouncer;
mod prometheus;
mod security;
mod up;
