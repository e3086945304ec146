//! The script registry: every Lua script the bus runs, each `scripts/<name>.lua` with
//! `scripts/prelude.lua` in front, compiled into the binary and loaded by SHA on first use.
//! What each script takes (KEYS, ARGV) and returns is written at the top of its file.

use std::sync::OnceLock;

use fred::types::scripts::Script;

macro_rules! scripts {
    ($($name:ident => $file:literal,)*) => {
        $(
            #[doc = concat!("`scripts/", $file, "`, after the prelude.")]
            pub(crate) fn $name() -> &'static Script {
                static S: OnceLock<Script> = OnceLock::new();
                S.get_or_init(|| {
                    Script::from_lua(concat!(
                        include_str!("scripts/prelude.lua"),
                        include_str!(concat!("scripts/", $file))
                    ))
                })
            }
        )*

        /// Every script, by name (for the test that loads them all into a real Redis).
        #[cfg(test)]
        pub(crate) fn all() -> Vec<(&'static str, &'static Script)> {
            vec![$((stringify!($name), $name())),*]
        }
    };
}

scripts! {
    adopt_renamed_key_script => "adopt_renamed_key.lua",
    dead_letter_script => "dead_letter.lua",
    dedup_publish_script => "dedup_publish.lua",
    delete_idle_consumer_script => "delete_idle_consumer.lua",
    lane_read_script => "lane_read.lua",
    move_delayed_script => "move_delayed.lua",
    release_script => "release.lua",
    renew_script => "renew.lua",
    replay_script => "replay.lua",
    retry_script => "retry.lua",
    schedule_delayed_script => "schedule_delayed.lua",
    take_script => "take.lua",
    trim_step_script => "trim_step.lua",
    write_status_script => "write_status.lua",
}

#[cfg(test)]
mod tests {
    use fred::prelude::*;

    /// Every script compiles in a real Redis (`SCRIPT LOAD`), and the SHA Redis computes is the
    /// one the bus sends with `EVALSHA`.
    #[tokio::test]
    async fn every_script_loads_into_redis() {
        let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let client = Builder::from_config(Config::from_url(&url).expect("url"))
            .build()
            .expect("client");
        client.init().await.expect("connect to Redis");
        for (name, script) in super::all() {
            let body = script.lua().map(|l| l.to_string()).unwrap_or_default();
            let sha: String = client
                .script_load(body)
                .await
                .unwrap_or_else(|e| panic!("{name} does not load: {e}"));
            assert_eq!(sha.as_str(), &**script.sha1(), "{name}");
        }
        let _ = client.quit().await;
    }
}
