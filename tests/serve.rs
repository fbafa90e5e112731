//! memtrace serve scraped by a real Prometheus server (Debian's
//! `prometheus`), both on 127.0.0.1, queried through Prometheus's HTTP API:
//! exact fault counts of a workload in its own cgroup, and an OOM kill in a
//! memory cgroup (root). Each test takes the machine-wide lock: it makes
//! cgroups and wants no other test's OOM kill.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::system::*;
use common::*;
use serde_json::Value;

/// A port nobody listens on now (the kernel's pick, given back at once).
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// GET http://127.0.0.1:PORT/PATH: the status and body, or None when nothing answers.
fn http_get(port: u16, path: &str) -> Option<(u32, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// Percent-encodes a query parameter.
fn encoded(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A Prometheus server on 127.0.0.1 scraping `target` every second, its
/// data in a directory of its own; killed and removed when dropped.
struct Prometheus {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Prometheus {
    fn start(target: u16) -> Prometheus {
        let dir = temp_path("prometheus");
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: memtrace\n    static_configs:\n      - targets: ['127.0.0.1:{target}']\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("log")).unwrap())
            .spawn()
            .expect("starting prometheus (Debian's package `prometheus`: make deps installs it)");
        let mut prometheus = Prometheus { child, port, dir };
        let deadline = Instant::now() + scaled(Duration::from_secs(60));
        while http_get(port, "/-/ready").map(|(status, _)| status) != Some(200) {
            assert!(
                prometheus.child.try_wait().unwrap().is_none() && Instant::now() < deadline,
                "prometheus did not become ready: {}",
                prometheus.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        prometheus
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    /// The value of an instant query's one series, or None while it has none.
    fn query(&self, query: &str) -> Option<f64> {
        let (status, body) = http_get(
            self.port,
            &format!("/api/v1/query?query={}", encoded(query)),
        )?;
        assert_eq!(status, 200, "{query}: {body}");
        let answer: Value = serde_json::from_str(&body).unwrap();
        let series = answer["data"]["result"].as_array()?;
        assert!(series.len() <= 1, "{query}: more than one series: {body}");
        series.first()?["value"][1].as_str()?.parse().ok()
    }

    /// Waits (up to 30 s, scaled) for `query` to give `wanted`; the last value seen.
    fn wait_for(&self, query: &str, wanted: f64) -> Option<f64> {
        self.wait_until(query, |value| value == wanted)
    }

    /// Waits (up to 30 s, scaled) for `query` to give a value `good` takes;
    /// the last value seen.
    fn wait_until(&self, query: &str, good: impl Fn(f64) -> bool) -> Option<f64> {
        let deadline = Instant::now() + scaled(Duration::from_secs(30));
        let mut last = None;
        while Instant::now() < deadline {
            last = self.query(query);
            if last.is_some_and(&good) {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        last
    }

    /// Whether the last scrape of memtrace succeeded.
    fn target_up(&self) -> bool {
        self.query("up{job=\"memtrace\"}") == Some(1.0)
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `program` with `args` from inside the cgroup at `dir`: a shell
/// joins it, then execs the program, whose every fault is the cgroup's.
fn run_in_cgroup(dir: &Path, program: &Path, args: &[&str]) -> std::process::ExitStatus {
    Command::new("sh")
        .arg("-c")
        .arg("echo $$ > \"$0/cgroup.procs\" && exec \"$@\"")
        .arg(dir)
        .arg(program)
        .args(args)
        .status()
        .unwrap()
}

/// Gives the children of a cgroup their own memory limits: on v2 the parent
/// enables the controller below it (and may then hold no process itself).
fn enable_memory_below(dir: &Path) {
    let control = dir.join("cgroup.subtree_control");
    if control.exists() {
        std::fs::write(control, "+memory").unwrap();
    }
}

/// A limit for a cgroup made by ChildCgroup, v1 or v2.
fn limit(dir: &Path, bytes: u64) {
    let file = ["memory.limit_in_bytes", "memory.max"]
        .into_iter()
        .map(|name| dir.join(name))
        .find(|file| file.exists())
        .unwrap_or_else(|| panic!("{} has no memory limit file", dir.display()));
    std::fs::write(file, bytes.to_string()).unwrap();
}

/// `memtrace serve --collect COLLECT` on a free port, and a Prometheus
/// server scraping it.
fn serve_scraped(collect: &str) -> (Tracer, Prometheus) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let serve = Tracer::start(&["serve", "--listen", &listen, "--collect", collect]);
    (serve, Prometheus::start(port))
}

#[test]
fn prometheus_scrapes_exact_faults_and_an_oom_kill_by_cgroup() {
    for tool in ["ffaults", "oomkill", "drsnoop", "mmapsnoop"] {
        require_tool!(tool);
    }
    let _lock = lock_system_state();
    let cgroup = MemoryCgroup::create(1 << 30);
    enable_memory_below(cgroup.dir());
    let touch = ChildCgroup::create(cgroup.dir(), "touch");
    let oom = ChildCgroup::create(cgroup.dir(), "oom");
    limit(&oom.0, 32 << 20);
    let (serve, prometheus) = serve_scraped("faults,oom,reclaim,mmap");

    // 64 MiB of anonymous memory touched a page at a time by a program with
    // no C library: exactly 16384 minor faults on anonymous memory
    let anontouch = fixture_with(
        "anontouch",
        "anontouch",
        &["-static", "-nostdlib", "-fno-stack-protector"],
    );
    assert!(run_in_cgroup(&touch.0, &anontouch, &[]).success());
    let faults = format!(
        "memtrace_page_faults_total{{cgroup=\"{}/touch\",comm=\"anontouch\",kind=\"minor\",mapping=\"anon\"}}",
        cgroup.path
    );
    assert_eq!(
        prometheus.wait_for(&faults, 16384.0),
        Some(16384.0),
        "prometheus log:\n{}",
        prometheus.log()
    );
    // and no major faults, nor faults counted for it anywhere else
    let elsewhere = "sum(memtrace_page_faults_total{comm=\"anontouch\",mapping=\"anon\"})";
    assert_eq!(prometheus.query(elsewhere), Some(16384.0));
    // its one mmap() call, counted in the kernel
    let mmaps = format!(
        "memtrace_mmap_calls_total{{cgroup=\"{}/touch\",comm=\"anontouch\",kind=\"anon\"}}",
        cgroup.path
    );
    assert_eq!(prometheus.wait_for(&mmaps, 1.0), Some(1.0));

    // 256 MiB in a cgroup limited to 32 MiB: one OOM kill
    let toucher = fixture("toucher");
    let status = run_in_cgroup(&oom.0, &toucher, &["anon", "256"]);
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL),
        "256 MiB in a 32 MiB cgroup must be OOM-killed: {status:?}"
    );
    let kills = format!(
        "memtrace_oom_kills_total{{cgroup=\"{}/oom\",comm=\"toucher\",constraint=\"memcg\"}}",
        cgroup.path
    );
    assert_eq!(prometheus.wait_for(&kills, 1.0), Some(1.0));
    let rss = format!(
        "memtrace_oom_victim_rss_bytes_total{{cgroup=\"{}/oom\",comm=\"toucher\"}}",
        cgroup.path
    );
    let rss = prometheus.query(&rss).unwrap_or(0.0);
    // its anonymous memory filled the limit; its file pages (the binary, libc) are beside it
    assert!(
        (16.0 * 1048576.0..=48.0 * 1048576.0).contains(&rss),
        "victim rss {rss}"
    );
    // before the kill, the cgroup reclaimed from itself at its limit
    let stalls = format!(
        "memtrace_reclaim_stall_seconds_count{{cgroup=\"{}/oom\",kind=\"memcg\"}}",
        cgroup.path
    );
    let stalls = prometheus.wait_until(&stalls, |n| n >= 1.0);
    assert!(
        stalls.is_some_and(|n| n >= 1.0),
        "memcg reclaim stalls before the OOM kill: {stalls:?}"
    );
    assert!(prometheus.target_up());
    let started = prometheus
        .query("memtrace_start_time_seconds")
        .unwrap_or(0.0);
    assert!(started > 1.7e9, "start time {started}");

    drop(prometheus);
    let finished = serve.stop();
    finished.assert_success();
    drop(touch);
    drop(oom);
}

#[test]
fn prometheus_scrapes_swap_ins_by_cgroup() {
    require_tool!("swapin");
    let _lock = lock_system_state();
    let _swap = SwapFile::on(256 << 20);
    let cgroup = MemoryCgroup::create(64 << 20);
    // no readahead: each page read from swap is one major fault
    let _page_cluster = Sysctl::set("/proc/sys/vm/page-cluster", "0");
    let (serve, prometheus) = serve_scraped("swap");

    // 128 MiB written in a 64 MiB cgroup and read back: at least 64 MiB
    // (16384 pages) went to swap and came back, each page by a fault. The
    // kernel's count of pages read from swap over the same time bounds ours
    // (the few beyond are other processes' or swap-cache races).
    let before = vmstat("pswpin") + vmstat("zswpin");
    let status = run_in_cgroup(cgroup.dir(), &fixture("pressure"), &["swap", "128"]);
    let machine = (vmstat("pswpin") + vmstat("zswpin")) as f64;
    let machine = machine - before as f64;
    assert!(
        status.success(),
        "pressure swap (checks every page): {status:?}"
    );
    let within = |ours: f64| ours <= machine && machine - ours <= machine / 100.0 + 64.0;
    let labels = format!("{{cgroup=\"{}\",comm=\"pressure\"}}", cgroup.path);
    // the counts settle within a refresh or two
    let settled = |metric: &str| {
        let query = format!("{metric}{labels}");
        let mut last = None;
        for _ in 0..20 {
            std::thread::sleep(Duration::from_millis(1500));
            let now = prometheus.query(&query);
            if now.is_some() && now == last {
                break;
            }
            last = now;
        }
        last.unwrap_or(0.0)
    };
    let faults = settled("memtrace_swapin_faults_total");
    assert!(
        faults >= 16384.0 && within(faults),
        "{faults} swap-in faults, pswpin+zswpin {machine}"
    );
    let pages = settled("memtrace_swapin_pages_total");
    assert!(
        pages >= 16384.0 && within(pages),
        "{pages} pages, pswpin+zswpin {machine}"
    );

    drop(prometheus);
    serve.stop().assert_success();
}

#[test]
fn profiles_are_written_periodically_for_a_collector() {
    require_tool!("ffaults");
    require_tool!("memleak");
    let dir = temp_path("profiles");
    std::fs::create_dir_all(&dir).unwrap();
    // leaks exactly 30000 bytes through leak_with() once let go, then holds
    // them for 3 s
    let mut leaker = Held::start(&fixture("leaker"), &["malloc", "3000"]);
    let pid = leaker.pid().to_string();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let args = ["serve", "--listen", &listen, "--collect", "faults"];
    let profiles = ["--profiles", dir.to_str().unwrap(), "--every", "1"];
    let mut serve = Tracer::start(&[&args[..], &profiles, &["--profile-pid", &pid]].concat());
    // memleak, in a process of its own, says when its probes are on
    let attached = serve.stderr_line(
        |l| l.starts_with("Tracing allocations"),
        scaled(Duration::from_secs(30)),
    );
    assert!(attached.is_some(), "memleak did not start");
    assert!(leaker.go().success());
    // the leaker gone, memleak writes its last profile and ends: serve says so
    let ended = serve.stderr_line(
        |l| l.contains("--profiles: memleak ended"),
        scaled(Duration::from_secs(30)),
    );
    assert!(ended.is_some(), "memleak did not end with its process");
    let finished = serve.stop();
    finished.assert_success();

    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    // one at each second of the 3 s hold (in an emulated guest, fewer), and
    // the last at the end
    assert!(names.len() >= 2, "{names:?}");
    for name in &names {
        let stamp = name
            .strip_prefix("memleak-")
            .and_then(|n| n.strip_suffix("Z.pb.gz"))
            .unwrap_or_else(|| panic!("{name}"));
        let (date, millis) = stamp.split_once('.').unwrap();
        assert!(
            date.len() == 15 && &date[8..9] == "T" && millis.len() == 3,
            "{name}"
        );
    }
    // the leak, exactly, in what a profiler reads
    let last = dir.join(names.last().unwrap());
    assert_eq!(pprof_flat(&last, "inuse_space B", "leak_with"), "30000B");
    assert_eq!(pprof_flat(&last, "inuse_objects", "leak_with"), "1");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn serve_answers_metrics_and_refuses_what_it_cannot_do() {
    require_tool!("ffaults");
    let _lock = lock_system_state();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let serve = Tracer::start(&["serve", "--listen", &listen, "--collect", "faults"]);
    // the faults of this machine (this test's own among them) show within
    // a refresh (1 s)
    let deadline = Instant::now() + scaled(Duration::from_secs(10));
    let (status, body) = loop {
        let (status, body) = http_get(port, "/metrics").expect("serve answers");
        if body.contains("memtrace_page_faults_total{") || Instant::now() > deadline {
            break (status, body);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(status, 200);
    assert!(
        body.contains("# TYPE memtrace_page_faults counter"),
        "{body}"
    );
    assert!(body.contains("memtrace_start_time_seconds "), "{body}");
    assert!(body.contains("memtrace_build_info{"), "{body}");
    assert!(
        !body.contains("memtrace_oom_kills"),
        "oom not collected: {body}"
    );
    assert!(body.ends_with("# EOF\n"), "{body}");
    assert_eq!(http_get(port, "/nothing").map(|(s, _)| s), Some(404));

    // the port taken: one line, status 1, nothing loaded
    let taken = memtrace()
        .args([
            "serve",
            "--listen",
            &listen,
            "--collect",
            "faults",
            "-d",
            "1",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&taken.stderr);
    assert_eq!(taken.status.code(), Some(1), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("memtrace serve: --listen 127.0.0.1:"),
        "{lines:?}"
    );
    let finished = serve.stop();
    finished.assert_success();

    let bad = memtrace()
        .args(["serve", "--collect", "faults,nothing"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
}
