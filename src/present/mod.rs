//! Presentation: how what the tools found reaches people and programs. A row
//! becomes a table line or a JSON object (output, table), untrusted names are
//! escaped (escape), kernel values are decoded and formatted for people
//! (decode, format), messages reach stderr without panicking (stderr), stacks become reports, folded lines, flame graphs and
//! pprof profiles (stack_report, profile), written to files reserved before
//! the trace and never through a planted symlink (output_file). The bottom layer: it imports no
//! other part of memtrace.

pub mod decode;
pub mod escape;
pub mod format;
pub mod output;
pub mod output_file;
pub mod profile;
pub mod stack_report;
pub mod stderr;
pub mod table;
