//! The registry: every tool once, with its name, summary, clap command and
//! run function. It drives `memtrace <tool>`, `memtrace --list`, dispatch
//! through a link named after a tool, and the links `make install` makes.

use std::ffi::OsString;

use anyhow::Result;
use clap::{ArgMatches, CommandFactory, FromArgMatches};

pub mod brkstack;
pub mod drsnoop;
pub mod fault_counts;
pub mod faults;
pub mod ffaults;
pub mod fmapfault;
pub mod hfaults;
pub mod memleak;
pub mod mmapfiles;
pub mod mmapsnoop;
pub mod oomkill;
pub mod pmap;
pub mod shmsnoop;
pub mod stack_counts;
pub mod swapin;
pub mod vmscan;

pub struct Tool {
    pub name: &'static str,
    pub about: &'static str,
    pub command: fn() -> clap::Command,
    /// Runs the tool with its parsed options and the `-- COMMAND` words (split off before parsing).
    pub run: fn(&ArgMatches, Vec<OsString>) -> Result<i32>,
}

macro_rules! tool {
    ($module:ident) => {
        tool!($module, || $module::Args::command())
    };
    // a tool whose command needs adjusting beyond its derive (memleak's -T)
    ($module:ident, $command:expr) => {
        Tool {
            name: stringify!($module),
            about: $module::ABOUT,
            command: || ($command)().name(stringify!($module)),
            run: |matches, command| {
                let mut args = $module::Args::from_arg_matches(matches)?;
                args.common.tool = stringify!($module);
                args.common.command = command;
                if let Some(message) = args.common.conflict() {
                    return Ok(usage_error(($command)().name(stringify!($module)), message));
                }
                $module::run(args)
            },
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
    tool!(memleak, memleak::command),
    tool!(oomkill),
    tool!(drsnoop),
    tool!(vmscan),
    tool!(swapin),
    tool!(brkstack),
    tool!(pmap, pmap::command),
    tool!(shmsnoop),
];

/// Prints a usage error as clap does (the message, then the usage line) and
/// returns clap's status for it, 2.
pub fn usage_error(mut command: clap::Command, message: &str) -> i32 {
    let err = clap::Error::raw(
        clap::error::ErrorKind::ArgumentConflict,
        format!("{message}\n"),
    )
    .format(&mut command);
    let _ = err.print();
    err.exit_code()
}

pub fn find(name: &str) -> Option<&'static Tool> {
    TOOLS.iter().find(|tool| tool.name == name)
}
