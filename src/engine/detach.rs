//! Links closed in threads of their own. Removing some attachments makes the
//! kernel wait for RCU grace periods before close(2) returns (a classic
//! tracepoint's perf event, a uprobe link: tens of ms each), so memtrace
//! closes them while it does something else (the next close, the final
//! report), and waits for them before it exits.

use std::thread::JoinHandle;

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
}
