//! Integration tests: gatehouse's real server on 127.0.0.1:0 beside a real upstream.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;
mod idp;
mod keys;

mod admin;
mod browser;
mod capacity;
mod cli;
mod config;
mod connections;
mod deploy;
mod dns;
mod domains;
mod factors;
mod faulty;
mod hygiene;
mod identity;
mod inject;
mod layering;
mod limits;
mod manage;
mod mfa;
mod nginx_signin;
mod oidc;
mod oidc_attacks;
mod oidc_browser;
mod openapi;
mod ops;
mod paths;
mod pg;
mod pool;
mod proxy;
mod reload;
mod replicas;
mod shutdown;
mod signin;
mod signin_attacks;
mod signin_browser;
mod smtp;
mod stores;
mod traefik_signin;
mod tunnel_attacks;
mod ws;
