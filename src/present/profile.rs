//! Stack profiles for other programs to read: folded stacks, flame graph SVGs
//! (inferno), and pprof's profile.proto (gzipped), written once for every
//! stack-counting tool.

use std::collections::HashMap;
use std::io::Write;

use anyhow::Result;

use crate::present::output_file::OutputFile;

/// A folded-stack line: frames outermost first, `;`-joined (a `;` inside a
/// frame becomes `:`), then the value.
pub fn folded_line(frames_outermost_first: &[String], value: u64) -> String {
    let frames: Vec<String> = frames_outermost_first
        .iter()
        .map(|f| f.replace(';', ":"))
        .collect();
    format!("{} {value}", frames.join(";"))
}

/// A flame graph (inferno) written as SVG at the end of a trace: the stacks
/// seen (frames outermost first) and what they weigh, added up.
pub struct FlameGraph {
    file: OutputFile,
    title: &'static str,
    count_name: &'static str,
    stacks: HashMap<Vec<String>, u64>,
}

impl FlameGraph {
    /// A flame graph to write to `file`, reserved before the trace.
    pub fn new(file: OutputFile, title: &'static str, count_name: &'static str) -> FlameGraph {
        FlameGraph {
            file,
            title,
            count_name,
            stacks: HashMap::new(),
        }
    }

    pub fn add(&mut self, frames_outermost_first: Vec<String>, weight: u64) {
        *self.stacks.entry(frames_outermost_first).or_default() += weight;
    }

    pub fn write(self) -> Result<()> {
        let lines: Vec<String> = self
            .stacks
            .iter()
            .map(|(frames, value)| folded_line(frames, *value))
            .collect();
        let mut options = inferno::flamegraph::Options::default();
        options.title = self.title.into();
        options.count_name = self.count_name.into();
        self.file.commit(|out| {
            inferno::flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), out)
        })
    }
}

/// profile.proto's messages (github.com/google/pprof, proto/profile.proto),
/// the fields memtrace fills in, encoded by prost.
mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Profile {
        #[prost(message, repeated, tag = "1")]
        pub sample_type: Vec<ValueType>,
        #[prost(message, repeated, tag = "2")]
        pub sample: Vec<Sample>,
        #[prost(message, repeated, tag = "3")]
        pub mapping: Vec<Mapping>,
        #[prost(message, repeated, tag = "4")]
        pub location: Vec<Location>,
        #[prost(message, repeated, tag = "5")]
        pub function: Vec<Function>,
        #[prost(string, repeated, tag = "6")]
        pub string_table: Vec<String>,
        #[prost(int64, tag = "9")]
        pub time_nanos: i64,
        #[prost(int64, tag = "14")]
        pub default_sample_type: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ValueType {
        #[prost(int64, tag = "1")]
        pub r#type: i64,
        #[prost(int64, tag = "2")]
        pub unit: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Sample {
        #[prost(uint64, repeated, tag = "1")]
        pub location_id: Vec<u64>,
        #[prost(int64, repeated, tag = "2")]
        pub value: Vec<i64>,
        #[prost(message, repeated, tag = "3")]
        pub label: Vec<Label>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Label {
        #[prost(int64, tag = "1")]
        pub key: i64,
        #[prost(int64, tag = "2")]
        pub str: i64,
        #[prost(int64, tag = "3")]
        pub num: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Mapping {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(uint64, tag = "2")]
        pub memory_start: u64,
        #[prost(uint64, tag = "3")]
        pub memory_limit: u64,
        #[prost(uint64, tag = "4")]
        pub file_offset: u64,
        #[prost(int64, tag = "5")]
        pub filename: i64,
        #[prost(int64, tag = "6")]
        pub build_id: i64,
        #[prost(bool, tag = "7")]
        pub has_functions: bool,
        #[prost(bool, tag = "8")]
        pub has_filenames: bool,
        #[prost(bool, tag = "9")]
        pub has_line_numbers: bool,
        #[prost(bool, tag = "10")]
        pub has_inline_frames: bool,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Location {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(uint64, tag = "2")]
        pub mapping_id: u64,
        #[prost(uint64, tag = "3")]
        pub address: u64,
        #[prost(message, repeated, tag = "4")]
        pub line: Vec<Line>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Line {
        #[prost(uint64, tag = "1")]
        pub function_id: u64,
        #[prost(int64, tag = "2")]
        pub line: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Function {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(int64, tag = "2")]
        pub name: i64,
        #[prost(int64, tag = "3")]
        pub system_name: i64,
        #[prost(int64, tag = "4")]
        pub filename: i64,
    }
}

/// The executable mapping a profiled address is in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProfileMapping {
    pub start: u64,
    pub end: u64,
    pub file_offset: u64,
    pub path: String,
    /// The file's GNU build id in hex, "" where it has none.
    pub build_id: String,
}

/// A function at a profiled address (the one it is in, or one inlined
/// there), with its source file and line where known.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProfileLine {
    pub function: String,
    pub file: Option<String>,
    pub line: Option<u32>,
}

/// A frame of a profiled stack.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ProfileFrame {
    /// A user address in a mapping, and the functions there, innermost
    /// first (none where no symbol is known).
    Address {
        address: u64,
        mapping: ProfileMapping,
        lines: Vec<ProfileLine>,
    },
    /// A frame known by its name alone (a kernel function).
    Named(String),
}

/// A sample label: pid (a number) or comm, cgroup (strings).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LabelValue {
    Number(i64),
    Text(String),
}

/// A sample's labels: (name, value) pairs.
pub type Labels = Vec<(&'static str, LabelValue)>;

/// One stack of a profile: frames innermost first, its values in the order
/// of the profile's sample types, and its labels.
pub struct Sample {
    pub frames: Vec<ProfileFrame>,
    pub values: Vec<i64>,
    pub labels: Labels,
}

/// --pprof: a profile gathered as a trace goes, the values of a stack with
/// the same labels added up, written (gzipped profile.proto) at its end to
/// a file reserved before it.
pub struct Pprof {
    file: OutputFile,
    /// (type, unit) pairs such as ("inuse_space", "bytes"), the first the
    /// viewers' default: the names the profilers (pprof, Pyroscope, Parca) know.
    sample_types: &'static [(&'static str, &'static str)],
    samples: HashMap<(Vec<ProfileFrame>, Labels), Vec<i64>>,
}

impl Pprof {
    pub fn new(file: OutputFile, sample_types: &'static [(&'static str, &'static str)]) -> Pprof {
        Pprof {
            file,
            sample_types,
            samples: HashMap::new(),
        }
    }

    /// Adds `sample`'s values to those of its stack and labels.
    pub fn add(&mut self, sample: Sample) {
        let values = self
            .samples
            .entry((sample.frames, sample.labels))
            .or_insert_with(|| vec![0; sample.values.len()]);
        for (total, value) in values.iter_mut().zip(sample.values) {
            *total = total.saturating_add(value);
        }
    }

    pub fn write(self) -> Result<()> {
        let mut samples: Vec<Sample> = self
            .samples
            .into_iter()
            .map(|((frames, labels), values)| Sample {
                frames,
                values,
                labels,
            })
            .collect();
        // the heaviest first: its mappings come first, and viewers take the
        // first mapping for the main binary (`File:` in pprof -top)
        samples.sort_by(|a, b| b.values.cmp(&a.values));
        write_pprof(self.file, self.sample_types, &samples)
    }
}

/// A count as a profile's value (profile.proto's are signed).
pub fn profile_value(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

/// A profile.proto being built: strings, mappings, functions and locations
/// each kept once, by what they are.
#[derive(Default)]
struct ProfileBuilder {
    profile: proto::Profile,
    strings: HashMap<String, i64>,
    mappings: HashMap<ProfileMapping, u64>,
    functions: HashMap<(String, Option<String>), u64>,
    locations: HashMap<(u64, u64, Option<String>), u64>,
}

impl ProfileBuilder {
    fn string(&mut self, s: &str) -> i64 {
        if self.profile.string_table.is_empty() {
            self.profile.string_table.push(String::new());
            self.strings.insert(String::new(), 0);
        }
        if let Some(&id) = self.strings.get(s) {
            return id;
        }
        let id = self.profile.string_table.len() as i64;
        self.profile.string_table.push(s.to_string());
        self.strings.insert(s.to_string(), id);
        id
    }

    fn mapping(&mut self, mapping: &ProfileMapping, has_lines: bool) -> u64 {
        if let Some(&id) = self.mappings.get(mapping) {
            return id;
        }
        let id = self.profile.mapping.len() as u64 + 1;
        let message = proto::Mapping {
            id,
            memory_start: mapping.start,
            memory_limit: mapping.end,
            file_offset: mapping.file_offset,
            filename: self.string(&mapping.path),
            build_id: self.string(&mapping.build_id),
            // the viewer must not symbolize what memtrace already has
            has_functions: true,
            has_filenames: has_lines,
            has_line_numbers: has_lines,
            has_inline_frames: true,
        };
        self.profile.mapping.push(message);
        self.mappings.insert(mapping.clone(), id);
        id
    }

    fn function(&mut self, name: &str, file: Option<&str>) -> u64 {
        let key = (name.to_string(), file.map(str::to_string));
        if let Some(&id) = self.functions.get(&key) {
            return id;
        }
        let id = self.profile.function.len() as u64 + 1;
        let name = self.string(name);
        let filename = file.map_or(0, |file| self.string(file));
        self.profile.function.push(proto::Function {
            id,
            name,
            system_name: name,
            filename,
        });
        self.functions.insert(key, id);
        id
    }

    fn location(&mut self, frame: &ProfileFrame) -> u64 {
        let (mapping_id, address, named) = match frame {
            ProfileFrame::Address {
                address,
                mapping,
                lines,
            } => {
                let has_lines = lines.iter().any(|l| l.line.is_some());
                (self.mapping(mapping, has_lines), *address, None)
            }
            ProfileFrame::Named(name) => (0, 0, Some(name.clone())),
        };
        let key = (mapping_id, address, named);
        if let Some(&id) = self.locations.get(&key) {
            return id;
        }
        let lines = match frame {
            ProfileFrame::Address { lines, .. } if lines.is_empty() => Vec::new(),
            ProfileFrame::Address { lines, .. } => lines
                .iter()
                .map(|line| proto::Line {
                    function_id: self.function(&line.function, line.file.as_deref()),
                    line: line.line.map_or(0, i64::from),
                })
                .collect(),
            ProfileFrame::Named(name) => vec![proto::Line {
                function_id: self.function(name, None),
                line: 0,
            }],
        };
        let id = self.profile.location.len() as u64 + 1;
        self.profile.location.push(proto::Location {
            id,
            mapping_id,
            address,
            line: lines,
        });
        self.locations.insert(key, id);
        id
    }
}

/// Writes a gzipped profile.proto that `go tool pprof`, Pyroscope and
/// Parca read, to `file`, reserved before the trace (see Pprof).
fn write_pprof(file: OutputFile, sample_types: &[(&str, &str)], samples: &[Sample]) -> Result<()> {
    let mut builder = ProfileBuilder::default();
    for (kind, unit) in sample_types {
        let value_type = proto::ValueType {
            r#type: builder.string(kind),
            unit: builder.string(unit),
        };
        builder.profile.sample_type.push(value_type);
    }
    if let Some((kind, _)) = sample_types.first() {
        builder.profile.default_sample_type = builder.string(kind);
    }
    for sample in samples {
        let location_id = sample.frames.iter().map(|f| builder.location(f)).collect();
        let label = sample
            .labels
            .iter()
            .map(|(key, value)| {
                let key = builder.string(key);
                match value {
                    LabelValue::Number(num) => proto::Label {
                        key,
                        str: 0,
                        num: *num,
                    },
                    LabelValue::Text(text) => proto::Label {
                        key,
                        str: builder.string(text),
                        num: 0,
                    },
                }
            })
            .collect();
        builder.profile.sample.push(proto::Sample {
            location_id,
            value: sample.values.clone(),
            label,
        });
    }
    builder.profile.time_nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos() as i64);
    let encoded = prost::Message::encode_to_vec(&builder.profile);
    file.commit(|out| {
        let mut gz = flate2::write::GzEncoder::new(out, flate2::Compression::default());
        gz.write_all(&encoded)?;
        gz.finish().map(drop)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folded() {
        let frames = vec!["main".to_string(), "a;b".to_string()];
        assert_eq!(folded_line(&frames, 7), "main;a:b 7");
    }

    #[test]
    fn frames_functions_and_mappings_are_kept_once() {
        let mapping = ProfileMapping {
            start: 0x1000,
            end: 0x2000,
            file_offset: 0,
            path: "/bin/app".into(),
            build_id: "abcd".into(),
        };
        let line = |function: &str, line| ProfileLine {
            function: function.into(),
            file: Some("app.c".into()),
            line: Some(line),
        };
        let leaf = ProfileFrame::Address {
            address: 0x1010,
            mapping: mapping.clone(),
            lines: vec![line("inlined_one", 3), line("leak", 7)],
        };
        let caller = ProfileFrame::Address {
            address: 0x1100,
            mapping,
            lines: vec![line("main", 20)],
        };
        let mut builder = ProfileBuilder::default();
        let first = builder.location(&leaf);
        assert_eq!(builder.location(&caller), first + 1);
        assert_eq!(builder.location(&leaf), first);
        let kernel = builder.location(&ProfileFrame::Named("kmalloc".into()));
        assert_eq!(
            builder.location(&ProfileFrame::Named("kmalloc".into())),
            kernel
        );
        let profile = &builder.profile;
        assert_eq!(profile.mapping.len(), 1);
        assert!(profile.mapping[0].has_line_numbers);
        assert_eq!(profile.location.len(), 3);
        assert_eq!(
            profile.location[0].line.len(),
            2,
            "the inlined function and its caller"
        );
        assert_eq!(
            profile.location[2].mapping_id, 0,
            "a kernel frame has no mapping"
        );
        assert_eq!(profile.function.len(), 4);
        let name = |id: i64| profile.string_table[id as usize].as_str();
        assert_eq!(name(profile.mapping[0].build_id), "abcd");
        assert_eq!(name(profile.function[1].name), "leak");
        assert_eq!(name(profile.function[1].filename), "app.c");
    }
}
