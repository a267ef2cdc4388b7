//! Script assembly: each Redis script is the store's clock, the constants it needs from the
//! Rust definitions (record layout, call names, caps), the shared Lua, then its own body.

use redis::Script;

use super::args::{lua_hot_ops, lua_ops};
use super::record;
use crate::domain::StatsNames;

/// The clock every script of a store given one (tests) starts with, in place of clock.lua:
/// the call's last argument, taken off so the script sees its own arguments as usual. Events
/// are stamped with it too, and, as Redis does with its own clock, never below the stream's
/// last event when the clock stepped back.
const GIVEN_CLOCK: &str = "local given_now = tonumber(table.remove(ARGV))
local function clock() return given_now end
local function event_id(stream)
  local last = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)[1]
  local last_ms = last and tonumber(string.match(last[1], '^(%d+)')) or 0
  return math.max(given_now, last_ms) .. '-*'
end
";

/// The store's scripts.
pub(super) struct Scripts {
    /// tick.lua: a tick or current call the hot decision can take.
    pub hot: Script,
    /// calls.lua: one or many calls, decided in order.
    pub decide: Script,
    pub sweep: Script,
    pub find: Script,
    pub events: Script,
    pub pointer: Script,
}

impl Scripts {
    /// The scripts, on the Redis server's clock, or (`given_clock`, tests) on the clock the
    /// caller sends as every call's last argument.
    pub fn new(names: &StatsNames, given_clock: bool) -> Self {
        let clock = if given_clock {
            GIVEN_CLOCK
        } else {
            include_str!("lua/clock.lua")
        };
        let script = |body: &str| Script::new(&format!("#!lua\n{clock}{body}"));
        Self {
            hot: script(&with_fast(&format!(
                "{}{}{}{}",
                record::lua_constants(false),
                lua_hot_ops(),
                include_str!("lua/prelude.lua"),
                include_str!("lua/tick.lua")
            ))),
            decide: script(&with_fast(&with_lib(
                names,
                &format!(
                    "{}{}{}{}",
                    include_str!("lua/args.lua"),
                    include_str!("lua/transition.lua"),
                    lua_ops(),
                    include_str!("lua/calls.lua")
                ),
            ))),
            sweep: script(&with_lib(
                names,
                concat!(include_str!("lua/args.lua"), include_str!("lua/sweep.lua")),
            )),
            find: script(&with_lib(names, include_str!("lua/find.lua"))),
            events: script(include_str!("lua/events.lua")),
            pointer: script(include_str!("lua/pointer.lua")),
        }
    }
}

/// The body of a script of lib.lua's users: the record's constants (record.rs), prelude.lua,
/// the caps on stats names lib.lua reads, lib.lua, then `tail`.
fn with_lib(names: &StatsNames, tail: &str) -> String {
    format!(
        "{}{}local STATS_MAX_RELEASES, STATS_MAX_ENVIRONMENTS = {}, {}\n{}{tail}",
        record::lua_constants(true),
        include_str!("lua/prelude.lua"),
        names.releases,
        names.environments,
        include_str!("lua/lib.lua"),
    )
}

/// A script body with the hot decision (fast.lua) put in place of its `-- @fast` line.
fn with_fast(source: &str) -> String {
    assert!(
        source.contains("-- @fast\n"),
        "a script takes the hot decision"
    );
    source.replacen("-- @fast\n", include_str!("lua/fast.lua"), 1)
}
