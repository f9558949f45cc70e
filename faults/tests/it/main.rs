mod cluster;
mod security;
