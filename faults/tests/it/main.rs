mod budget;
mod cluster;
mod erasure;
mod prometheus;
mod restore;
mod security;
mod up;
