//! Links closed off memtrace's own path. Removing some attachments makes the
//! kernel wait for RCU grace periods before close(2) returns (a classic
//! tracepoint's perf event, a uprobe link: tens of ms each). During a trace
//! memtrace closes them in threads while it goes on (`Detaching`); at its end
//! it hands them to a process of their own, which closes them once memtrace
//! has exited (`close_after_exit`), so that a trace's end (its report, its
//! exit status) does not wait for the kernel's grace periods.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::thread::JoinHandle;

use nix::unistd::{fork, ForkResult};

/// Closes `fds` in a child process that holds copies of them until memtrace
/// exits: memtrace's own closes are then quick (the kernel removes an
/// attachment when its last descriptor goes), and the removal's wait falls
/// on the child. SIGKILL to either leaves nothing attached: the kernel closes
/// a dead process's descriptors. If no child can be made, they are closed here.
pub fn close_after_exit(fds: Vec<OwnedFd>) {
    if !fds.is_empty() {
        let _ = hand_to_closer(&fds);
    }
    drop(fds);
}

fn hand_to_closer(fds: &[OwnedFd]) -> nix::Result<()> {
    // the child reads this pipe until every write end is gone: memtrace exited
    let (wait_end, exit_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    // made before fork: the child may not allocate (another thread may hold
    // the allocator's lock)
    let mut keep: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    keep.push(wait_end.as_raw_fd());
    keep.sort_unstable();
    // SAFETY: the child runs only async-signal-safe system calls (closer).
    match unsafe { fork() }? {
        ForkResult::Child => closer(&keep, wait_end.as_raw_fd()),
        ForkResult::Parent { .. } => {
            // held open until memtrace exits
            std::mem::forget(exit_end);
            Ok(())
        }
    }
}

/// The child: keeps `keep` (the links and the pipe's read end), closes every
/// other descriptor (stdout and stderr above all, which a reader of
/// memtrace's output waits on), waits for memtrace's exit, and exits, which
/// closes the links.
fn closer(keep: &[RawFd], wait_fd: RawFd) -> ! {
    let mut next: libc::c_uint = 0;
    for &fd in keep {
        let fd = fd as libc::c_uint;
        if fd > next {
            close_range(next, fd - 1);
        }
        next = fd + 1;
    }
    close_range(next, libc::c_uint::MAX);
    let mut byte = 0u8;
    // SAFETY: prctl, read and _exit are system calls, async-signal-safe; the
    // name is a NUL-terminated static string and `byte` outlives the read.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, c"memtrace-close".as_ptr());
        while libc::read(wait_fd, (&mut byte as *mut u8).cast(), 1) < 0
            && *libc::__errno_location() == libc::EINTR
        {}
        libc::_exit(0)
    }
}

/// close_range(2): Linux 5.9+.
fn close_range(first: libc::c_uint, last: libc::c_uint) {
    // SAFETY: a system call on descriptor numbers alone.
    unsafe { libc::syscall(libc::SYS_close_range, first, last, 0 as libc::c_uint) };
}

/// Closes handed to threads; dropping it waits for them.
#[derive(Default)]
pub struct Detaching {
    threads: Vec<JoinHandle<()>>,
}

impl Detaching {
    /// Drops `links` in a thread of its own. If no thread can be started, the
    /// closure, and the links with it, are dropped at once: closed here.
    pub fn close<T: Send + 'static>(&mut self, links: T) {
        let started = std::thread::Builder::new()
            .name("memtrace-detach".into())
            .spawn(move || drop(links));
        if let Ok(thread) = started {
            self.threads.push(thread);
        }
    }
}

impl Drop for Detaching {
    fn drop(&mut self) {
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    struct Counted(Arc<AtomicUsize>);

    impl Drop for Counted {
        fn drop(&mut self) {
            std::thread::sleep(std::time::Duration::from_millis(20));
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn every_close_is_done_when_it_is_dropped() {
        let closed = Arc::new(AtomicUsize::new(0));
        let mut detaching = Detaching::default();
        for _ in 0..4 {
            detaching.close(Counted(Arc::clone(&closed)));
        }
        detaching.close(vec![
            Counted(Arc::clone(&closed)),
            Counted(Arc::clone(&closed)),
        ]);
        drop(detaching);
        assert_eq!(closed.load(Ordering::SeqCst), 6);
    }

    /// Set in the child run of the test below: the descriptor to hand over.
    const HAND_OVER_FD: &str = "MEMTRACE_TEST_HAND_OVER_FD";

    /// Run by the test below as a process of its own (it exits, as memtrace
    /// does, after handing the descriptor over).
    #[test]
    #[ignore = "a child process of a_handed_descriptor_stays_open_until_its_owner_exits"]
    fn hand_over_and_exit() {
        let Some(fd) = std::env::var(HAND_OVER_FD)
            .ok()
            .and_then(|v| v.parse().ok())
        else {
            return;
        };
        // SAFETY: the parent test left this descriptor open for us alone.
        let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        close_after_exit(vec![fd]);
        std::thread::sleep(std::time::Duration::from_millis(300));
    }

    /// Whether the pipe's write ends are all closed within `ms` ms.
    fn write_ends_gone(read_end: &OwnedFd, ms: u16) -> bool {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let mut fds = [PollFd::new(read_end.as_fd(), PollFlags::POLLIN)];
        poll(&mut fds, PollTimeout::from(ms)).unwrap() == 1
    }

    #[test]
    fn a_handed_descriptor_stays_open_until_its_owner_exits() {
        // the write end goes to a child, without CLOEXEC
        let (read_end, write_end) = nix::unistd::pipe().unwrap();
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "engine::detach::tests::hand_over_and_exit",
                "--ignored",
            ])
            .env(HAND_OVER_FD, write_end.as_raw_fd().to_string())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(write_end);
        // the child closed its copy at once; the closer holds one while it lives
        assert!(
            !write_ends_gone(&read_end, 150),
            "closed before its owner exited"
        );
        let mut stdout = String::new();
        std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut stdout).unwrap();
        assert!(child.wait().unwrap().success(), "{stdout}");
        // the closer did not keep the child's stdout (read to its end above),
        // and closes what it holds once the child is gone
        assert!(
            write_ends_gone(&read_end, 5000),
            "still open after its owner exited"
        );
    }
}
