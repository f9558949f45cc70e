mod budget;
mod cluster;
mod security;
mod up;
