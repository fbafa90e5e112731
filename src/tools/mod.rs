//! The registry: every tool once, with its name, summary, clap command and
//! run function. It drives `memtrace <tool>`, `memtrace --list`, dispatch
//! through a link named after a tool, and the links `make install` makes.

use anyhow::Result;
use clap::{ArgMatches, CommandFactory, FromArgMatches};

pub mod faults;
pub mod ffaults;
pub mod fmapfault;
pub mod hfaults;
pub mod mmapfiles;
pub mod mmapsnoop;

pub struct Tool {
    pub name: &'static str,
    pub about: &'static str,
    pub command: fn() -> clap::Command,
    pub run: fn(&ArgMatches) -> Result<i32>,
}

macro_rules! tool {
    ($module:ident) => {
        Tool {
            name: stringify!($module),
            about: $module::ABOUT,
            command: || $module::Args::command().name(stringify!($module)),
            run: |matches| $module::run($module::Args::from_arg_matches(matches)?),
        }
    };
}

pub static TOOLS: &[Tool] = &[
    tool!(mmapsnoop),
    tool!(mmapfiles),
    tool!(ffaults),
    tool!(fmapfault),
    tool!(hfaults),
    tool!(faults),
];

pub fn find(name: &str) -> Option<&'static Tool> {
    TOOLS.iter().find(|tool| tool.name == name)
}
