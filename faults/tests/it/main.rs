mod budget;
mod cluster;
mod erasure;
mod prometheus;
mod security;
mod up;
