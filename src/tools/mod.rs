//! The registry: every tool once, with its name, summary, clap command and
//! run function. It drives `memtrace <tool>`, `memtrace --list`, dispatch
//! through a link named after a tool, and the links `make install` makes.

use std::ffi::OsString;

use anyhow::Result;
use clap::{ArgMatches, CommandFactory, FromArgMatches};

use crate::present::output;
use crate::present::output_file::OutputFile;

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
            command: || with_short_output(($command)().name(stringify!($module))),
            run: |matches, command| {
                let mut args = $module::Args::from_arg_matches(matches)?;
                args.common.tool = stringify!($module);
                args.common.command = command;
                if let Some(message) = args.common.conflict() {
                    return Ok(usage_error(($command)().name(stringify!($module)), message));
                }
                if let Some(path) = &args.common.output {
                    output::send_to(OutputFile::reserve("--output", path)?);
                }
                let result = $module::run(args);
                let finished = output::finish(result.is_ok());
                result.and_then(|code| finished.map(|()| code))
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

/// `-o` for --output, where the tool has no -o of its own (memleak's is
/// BCC's --older).
fn with_short_output(command: clap::Command) -> clap::Command {
    if command
        .get_arguments()
        .any(|arg| arg.get_short() == Some('o'))
    {
        return command;
    }
    command.mut_arg("output", |arg| arg.short('o'))
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tool_has_output_and_o_unless_it_has_its_own() {
        for tool in TOOLS {
            let command = (tool.command)();
            let output = command
                .get_arguments()
                .find(|arg| arg.get_long() == Some("output"))
                .unwrap_or_else(|| panic!("{} has no --output", tool.name));
            let short = (tool.name != "memleak").then_some('o');
            assert_eq!(output.get_short(), short, "{}", tool.name);
        }
    }
}
