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

/// Protocol-buffer wire encoding, just what profile.proto needs.
#[derive(Default)]
struct Message(Vec<u8>);

impl Message {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    fn uint(&mut self, field: u32, v: u64) {
        self.varint(u64::from(field) << 3);
        self.varint(v);
    }

    fn bytes(&mut self, field: u32, data: &[u8]) {
        self.varint((u64::from(field) << 3) | 2);
        self.varint(data.len() as u64);
        self.0.extend_from_slice(data);
    }

    fn packed(&mut self, field: u32, values: &[u64]) {
        let mut inner = Message::default();
        for &v in values {
            inner.varint(v);
        }
        self.bytes(field, &inner.0);
    }
}

/// One stack of a profile: frames innermost first, and its values in the
/// order of the profile's sample types.
pub struct Sample {
    pub frames: Vec<String>,
    pub values: Vec<u64>,
}

/// Writes a gzipped profile.proto that `pprof` and Pyroscope-style viewers
/// open to `file`, reserved before the trace; `sample_types` are (type,
/// unit) pairs such as ("inuse_space", "bytes").
pub fn write_pprof(
    file: OutputFile,
    sample_types: &[(&str, &str)],
    samples: &[Sample],
) -> Result<()> {
    let mut strings: Vec<String> = vec![String::new()];
    let mut string_ids: HashMap<String, u64> = HashMap::from([(String::new(), 0)]);
    let mut intern = |s: &str| -> u64 {
        if let Some(&id) = string_ids.get(s) {
            return id;
        }
        let id = strings.len() as u64;
        strings.push(s.to_string());
        string_ids.insert(s.to_string(), id);
        id
    };
    let mut profile = Message::default();
    for (kind, unit) in sample_types {
        let mut value_type = Message::default();
        value_type.uint(1, intern(kind));
        value_type.uint(2, intern(unit));
        profile.bytes(1, &value_type.0);
    }
    // one function and one location per distinct frame
    let mut frame_ids: HashMap<&str, u64> = HashMap::new();
    let mut functions = Message::default();
    let mut locations = Message::default();
    for sample in samples {
        let mut ids = Vec::with_capacity(sample.frames.len());
        for frame in &sample.frames {
            let next = frame_ids.len() as u64 + 1;
            let id = *frame_ids.entry(frame.as_str()).or_insert_with(|| {
                let name = intern(frame);
                let mut function = Message::default();
                function.uint(1, next);
                function.uint(2, name);
                function.uint(3, name);
                functions.bytes(5, &function.0);
                let mut line = Message::default();
                line.uint(1, next);
                let mut location = Message::default();
                location.uint(1, next);
                location.bytes(4, &line.0);
                locations.bytes(4, &location.0);
                next
            });
            ids.push(id);
        }
        let mut message = Message::default();
        message.packed(1, &ids);
        message.packed(2, &sample.values);
        profile.bytes(2, &message.0);
    }
    profile.0.extend_from_slice(&locations.0);
    profile.0.extend_from_slice(&functions.0);
    for s in &strings {
        profile.bytes(6, s.as_bytes());
    }
    file.commit(|out| {
        let mut gz = flate2::write::GzEncoder::new(out, flate2::Compression::default());
        gz.write_all(&profile.0)?;
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
    fn varints() {
        let mut m = Message::default();
        m.varint(1);
        m.varint(300);
        assert_eq!(m.0, [1, 0xac, 0x02]);
    }
}
