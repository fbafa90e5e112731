//! memtrace: eBPF tools that show where Linux memory goes, in one binary.
//! `memtrace <tool> ARGS`, or `<tool> ARGS` through a link named after the tool.

mod analysis;
mod cli;
mod doctor;
mod engine;
mod present;
mod reference;
mod serve;
mod tools;

use std::ffi::OsString;
use std::io::Write;
use std::path::Path;

use clap::{Arg, ArgAction, Command};

use tools::{Tool, TOOLS};

fn main() {
    let args: Vec<OsString> = std::env::args_os().collect();
    std::process::exit(dispatch(args));
}

/// The tool a program name selects: the exact file name of argv[0], so a
/// link `mmapsnoop -> memtrace` runs mmapsnoop (never resolved through the link).
fn tool_for_argv0(argv0: &OsString) -> Option<&'static Tool> {
    let name = Path::new(argv0).file_name()?.to_str()?;
    tools::find(name)
}

/// Splits `tool ARGS -- COMMAND ARGS` at the first `--`: what follows is the
/// command to run, never the tool's (so a tool's optional positionals, such as
/// memleak's interval and count, can't swallow it).
fn split_command(mut args: Vec<OsString>) -> (Vec<OsString>, Vec<OsString>) {
    match args.iter().position(|a| a == "--") {
        Some(i) => {
            let command = args.split_off(i + 1);
            args.pop();
            (args, command)
        }
        None => (args, Vec::new()),
    }
}

fn dispatch(args: Vec<OsString>) -> i32 {
    if let Some(tool) = args.first().and_then(tool_for_argv0) {
        return run_tool(tool, args);
    }
    // memtrace TOOL ...: an unknown tool name gets the list, not clap's guess.
    if let Some(first) = args.get(1).and_then(|a| a.to_str()) {
        if !first.starts_with('-')
            && tools::find(first).is_none()
            && ![
                "help",
                doctor::NAME,
                serve::NAME,
                reference::MANPAGE,
                reference::COMPLETIONS,
            ]
            .contains(&first)
        {
            crate::say!(
                "memtrace: unknown tool '{}'\n\n{}",
                present::escape::escape_bytes(first.as_bytes()),
                tool_list()
            );
            return 2;
        }
    } else if args.get(1).is_some() {
        crate::say!(
            "memtrace: the tool name is not valid UTF-8\n\n{}",
            tool_list()
        );
        return 2;
    }
    let (args, command) = split_command(args);
    let matches = match top_command().try_get_matches_from(&args) {
        Ok(matches) => matches,
        Err(err) => {
            let _ = err.print();
            return err.exit_code();
        }
    };
    if matches.get_flag("list") {
        return print_list();
    }
    match matches.subcommand() {
        Some((doctor::NAME, sub)) => match doctor::run(sub) {
            Ok(code) => code,
            Err(err) if present::output::is_output_closed(&err) => 0,
            Err(err) => {
                crate::say!("memtrace doctor: {err:#}");
                1
            }
        },
        Some((serve::NAME, sub)) => match serve::run(sub) {
            Ok(code) => code,
            Err(err) => {
                crate::say!("memtrace serve: {err:#}");
                1
            }
        },
        Some((reference::MANPAGE, sub)) => {
            print_generated("memtrace manpage", reference::manpage(sub, top_command()))
        }
        Some((reference::COMPLETIONS, sub)) => print_generated(
            "memtrace completions",
            reference::completions(sub, top_command()),
        ),
        Some((name, sub)) => match tools::find(name) {
            Some(tool) => finish(tool, (tool.run)(sub, command)),
            None => 2,
        },
        None => {
            let _ = top_command().print_help();
            2
        }
    }
}

fn top_command() -> Command {
    let mut command = Command::new("memtrace")
        .version(env!("CARGO_PKG_VERSION"))
        .about("eBPF tools that show where Linux memory goes")
        .after_help("Each tool also runs through a link named after it: `mmapsnoop -p 181`.")
        .arg(
            Arg::new("list")
                .long("list")
                .action(ArgAction::SetTrue)
                .help("List the tools"),
        );
    for tool in TOOLS {
        command = command.subcommand((tool.command)());
    }
    command
        .subcommand(doctor::command())
        .subcommand(serve::command())
        .subcommand(reference::manpage_command())
        .subcommand(reference::completions_command())
}

fn tool_list() -> String {
    let width = TOOLS.iter().map(|t| t.name.len()).max().unwrap_or(0);
    let mut list = String::from("Tools:\n");
    for tool in TOOLS {
        list.push_str(&format!("  {:<width$}  {}\n", tool.name, tool.about));
    }
    list
}

/// `memtrace --list` on stdout.
fn print_list() -> i32 {
    print_stdout("memtrace", "the list of tools", tool_list().as_bytes())
}

/// A man page or completion script on stdout, or the one line that says why not.
fn print_generated(who: &str, generated: anyhow::Result<Vec<u8>>) -> i32 {
    match generated {
        Ok(text) => print_stdout(who, "it", &text),
        Err(err) => {
            crate::say!("{who}: {err:#}");
            2
        }
    }
}

/// `text` on stdout: a closed pipe is a quiet end, another write error one line.
fn print_stdout(who: &str, what: &str, text: &[u8]) -> i32 {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(text).and_then(|()| stdout.flush()) {
        Ok(()) => 0,
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => 0,
        Err(err) => {
            crate::say!("{who}: writing {what}: {err}");
            1
        }
    }
}

fn run_tool(tool: &Tool, args: Vec<OsString>) -> i32 {
    let (args, command) = split_command(args);
    let clap_command = (tool.command)().version(env!("CARGO_PKG_VERSION"));
    match clap_command.try_get_matches_from(args) {
        Ok(matches) => finish(tool, (tool.run)(&matches, command)),
        Err(err) => {
            let _ = err.print();
            err.exit_code()
        }
    }
}

/// The one place a tool's result becomes an exit status.
fn finish(tool: &Tool, result: anyhow::Result<i32>) -> i32 {
    match result {
        Ok(code) => code,
        Err(err) if present::output::is_output_closed(&err) => 0,
        Err(err) => {
            crate::say!("{}: {:#}", tool.name, err);
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv0_selects_a_tool_by_exact_file_name() {
        let name = |s: &str| tool_for_argv0(&OsString::from(s)).map(|t| t.name);
        assert_eq!(name("mmapsnoop"), Some("mmapsnoop"));
        assert_eq!(name("/usr/local/bin/mmapsnoop"), Some("mmapsnoop"));
        assert_eq!(name("./mmapfiles"), Some("mmapfiles"));
        assert_eq!(name("memtrace"), None);
        assert_eq!(name("/usr/bin/memtrace"), None);
        assert_eq!(name("mmapsnoop.sh"), None);
        assert_eq!(name("xmmapsnoop"), None);
        assert_eq!(name("mmapsnoop-old"), None);
    }

    #[test]
    fn every_tool_is_listed_and_parses_its_help() {
        let list = tool_list();
        for tool in TOOLS {
            assert!(list.contains(tool.name));
            (tool.command)().debug_assert();
        }
        top_command().debug_assert();
    }

    #[test]
    fn the_command_is_split_off_at_the_first_double_dash() {
        let words = |s: &str| s.split(' ').map(OsString::from).collect::<Vec<_>>();
        let (head, command) = split_command(words("memleak 5 -- ./app -- x"));
        assert_eq!(head, words("memleak 5"));
        assert_eq!(command, words("./app -- x"));
        let (head, command) = split_command(words("mmapsnoop -p 1"));
        assert_eq!(head, words("mmapsnoop -p 1"));
        assert!(command.is_empty());
    }

    #[test]
    fn unknown_tool_is_status_2() {
        assert_eq!(dispatch(vec!["memtrace".into(), "nosuchtool".into()]), 2);
    }
}
