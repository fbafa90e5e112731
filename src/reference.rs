//! Man pages and shell completions, generated from the same clap commands
//! that parse the options (clap_mangen, clap_complete), so they can't drift
//! from them: `memtrace manpage [TOOL]` and `memtrace completions SHELL
//! [TOOL]` print them, and `make install` puts them where man and the shells
//! look. With TOOL, the page or completions are for the link named after
//! the tool (`mmapsnoop -p 181`), which bash and zsh look up by its own name.

use anyhow::{bail, Context, Result};
use clap::{value_parser, Arg, ArgMatches, Command};
use clap_complete::Shell;

use crate::tools;

pub const MANPAGE: &str = "manpage";
pub const COMPLETIONS: &str = "completions";

pub fn manpage_command() -> Command {
    Command::new(MANPAGE)
        .about("Print the man page of memtrace, or of a tool's link (roff, for man -l -)")
        .arg(tool_arg())
}

pub fn completions_command() -> Command {
    Command::new(COMPLETIONS)
        .about("Print shell completions for memtrace, or for a tool's link")
        .arg(
            Arg::new("shell")
                .required(true)
                .value_name("SHELL")
                .value_parser(value_parser!(Shell)),
        )
        .arg(tool_arg())
}

fn tool_arg() -> Arg {
    Arg::new("tool")
        .value_name("TOOL")
        .help("A tool, for the link named after it (or serve, for memtrace-serve)")
}

/// The command the page or completions describe, and its name: memtrace's
/// (`top`), or the tool named on the command line, as its link runs it.
fn described(matches: &ArgMatches, top: Command) -> Result<(Command, &'static str)> {
    let Some(name) = matches.get_one::<String>("tool") else {
        return Ok((top, "memtrace"));
    };
    if name == crate::serve::NAME {
        // a subcommand, not a link: its page is memtrace-serve(1), as git's are
        let command = crate::serve::command().version(env!("CARGO_PKG_VERSION"));
        return Ok((command, "memtrace-serve"));
    }
    let Some(tool) = tools::find(name) else {
        bail!(
            "unknown tool '{}' (memtrace --list names them)",
            crate::present::escape::escape_bytes(name.as_bytes())
        );
    };
    let command = (tool.command)().version(env!("CARGO_PKG_VERSION"));
    Ok((command, tool.name))
}

/// `memtrace manpage [TOOL]`: the page in roff.
pub fn manpage(matches: &ArgMatches, top: Command) -> Result<Vec<u8>> {
    let (command, name) = described(matches, top)?;
    let mut page = Vec::new();
    clap_mangen::Man::new(command.name(name))
        .render(&mut page)
        .context("rendering the man page")?;
    Ok(page)
}

/// `memtrace completions SHELL [TOOL]`: the shell's script.
pub fn completions(matches: &ArgMatches, top: Command) -> Result<Vec<u8>> {
    let shell = *matches
        .get_one::<Shell>("shell")
        .context("no shell given")?;
    let (mut command, name) = described(matches, top)?;
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, name, &mut script);
    Ok(script)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn top() -> Command {
        Command::new("memtrace")
            .subcommand(Command::new("mmapsnoop"))
            .subcommand(completions_command())
    }

    fn args(words: &[&str]) -> ArgMatches {
        let mut line = vec!["memtrace", COMPLETIONS];
        line.extend_from_slice(words);
        top()
            .try_get_matches_from(line)
            .unwrap()
            .subcommand_matches(COMPLETIONS)
            .unwrap()
            .clone()
    }

    fn text(bytes: Vec<u8>) -> String {
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn completions_name_the_subcommands_and_a_tools_options() {
        let bash = text(completions(&args(&["bash"]), top()).unwrap());
        assert!(bash.contains("mmapsnoop"), "{bash:.300}");
        let bash = text(completions(&args(&["bash", "mmapsnoop"]), top()).unwrap());
        assert!(bash.contains("complete -F _mmapsnoop"), "{bash:.300}");
        assert!(bash.contains("--output"), "{bash:.300}");
        let zsh = text(completions(&args(&["zsh", "faults"]), top()).unwrap());
        assert!(zsh.contains("--output"), "{zsh:.300}");
        let fish = text(completions(&args(&["fish", "faults"]), top()).unwrap());
        assert!(
            fish.contains("complete -c faults -s o -l output"),
            "{fish:.300}"
        );
    }

    #[test]
    fn an_unknown_tool_or_shell_is_refused() {
        let error = completions(&args(&["bash", "nosuch"]), top()).unwrap_err();
        assert_eq!(
            error.to_string(),
            "unknown tool 'nosuch' (memtrace --list names them)"
        );
        assert!(top()
            .try_get_matches_from(["memtrace", COMPLETIONS, "tcsh"])
            .is_err());
    }

    #[test]
    fn a_tools_page_is_named_after_it() {
        let top = Command::new("memtrace").subcommand(manpage_command());
        let matches = top
            .clone()
            .try_get_matches_from(["memtrace", MANPAGE, "memleak"])
            .unwrap();
        let page = text(manpage(matches.subcommand_matches(MANPAGE).unwrap(), top).unwrap());
        assert!(page.contains(".TH memleak 1"), "{page:.300}");
        assert!(page.contains("older"), "{page:.300}");
    }
}
