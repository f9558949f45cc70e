mod budget;
mod cluster;
mod prometheus;
mod security;
mod up;
