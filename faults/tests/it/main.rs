mod budget;
mod cluster;
mod security;
