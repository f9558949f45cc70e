mod budget;
mod cluster;
mod erasure;
mod pgbouncer;
mod prometheus;
mod restore;
mod security;
mod up;
