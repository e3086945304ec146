//! The Redis layer: running scripts ([`eval`]), the script registry (`scripts.rs`, Lua sources
//! in `scripts/*.lua`), reply parsers (`reply.rs`) and typed command helpers (`commands.rs`).
//! Features above use these instead of writing Lua or parsing raw replies themselves.

use fred::prelude::*;
use fred::types::scripts::Script;
use fred::types::Value;

use crate::error::{Error, Result};

mod commands;
mod reply;
mod scripts;

pub(crate) use commands::*;
pub(crate) use reply::*;
pub(crate) use scripts::*;

/// Runs a script by SHA, loading it when the server does not know it (after a restart or
/// `SCRIPT FLUSH`).
pub(crate) async fn eval(
    script: &Script,
    client: &Client,
    keys: Vec<String>,
    args: Vec<Value>,
) -> Result<Value> {
    script
        .evalsha_with_reload::<Value, _, _>(client, keys, args)
        .await
        .map_err(Error::client)
}
