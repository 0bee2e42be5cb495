//! Critical-task guards: while one is alive, refreshes ask to keep the
//! current server (`criticalTaskInProgress: true`, docs/design.md §5 rule 2).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Marks a critical task in progress until dropped. Get one from
/// [`crate::Client::critical_task`]; hold it across the whole multi-step
/// workflow.
#[derive(Debug)]
#[must_use = "the task counts as critical only while the guard is alive"]
pub struct CriticalTask {
    count: Arc<AtomicUsize>,
}

impl CriticalTask {
    pub(crate) fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        CriticalTask {
            count: Arc::clone(count),
        }
    }
}

impl Drop for CriticalTask {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_count_while_alive() {
        let c = Arc::new(AtomicUsize::new(0));
        let a = CriticalTask::new(&c);
        let b = CriticalTask::new(&c);
        assert_eq!(c.load(Ordering::SeqCst), 2);
        drop(a);
        assert_eq!(c.load(Ordering::SeqCst), 1);
        let moved = std::thread::spawn(move || drop(b));
        moved.join().unwrap();
        assert_eq!(c.load(Ordering::SeqCst), 0);
    }
}
