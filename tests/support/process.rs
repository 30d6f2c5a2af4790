//! A child process of a test (a gateway, an agent), killed and reaped when
//! the test ends however it ends.

use std::process::{Child, Command, ExitStatus, Output};
use std::time::{Duration, Instant};

/// A spawned child: `SIGKILL` and reaped on drop unless it already ended.
#[derive(Debug)]
pub struct Process {
    child: Option<Child>,
}

impl Process {
    /// Spawns `cmd`.
    pub fn spawn(cmd: &mut Command) -> Process {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("could not spawn {:?}: {e}", cmd.get_program()));
        Process { child: Some(child) }
    }

    fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("the process was already stopped")
    }

    /// Its exit status if it has ended, without waiting.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child().try_wait().unwrap()
    }

    /// `kill -9`, then reaps it (nothing when it is already gone).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends `signal` (a `kill` name: `INT`, `TERM`) and waits up to
    /// `within` for it to exit; its exit status, or `None` when it did not
    /// stop in time (then it is killed).
    pub fn stop(&mut self, signal: &str, within: Duration) -> Option<ExitStatus> {
        let pid = self.child().id().to_string();
        let sent = Command::new("kill")
            .args([format!("-{signal}").as_str(), &pid])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -{signal} {pid}");
        let start = Instant::now();
        loop {
            if let Some(s) = self.try_wait() {
                self.child = None;
                return Some(s);
            }
            if start.elapsed() > within {
                self.kill();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for it to exit; its status and the output it was spawned to
    /// pipe.
    pub fn wait_with_output(mut self) -> Output {
        self.child
            .take()
            .expect("the process was already stopped")
            .wait_with_output()
            .unwrap()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}
