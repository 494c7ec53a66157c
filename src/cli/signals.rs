//! Interrupts: unfinished output files are removed, and the exit status
//! says which signal stopped the command.

/// On SIGINT, SIGTERM and SIGHUP delete the unfinished output files
/// (see `vhdkit::unstable::pending`) and exit with 128 + the signal's number (130,
/// 143, 129), the status a shell reports for a command the signal killed.
pub fn remove_temp_files_on_signals() {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = match signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "vhdkit: warning: cannot handle interrupts ({e}); an interrupted command may leave a temporary file"
            );
            return;
        }
    };
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            vhdkit::unstable::pending::remove_all_and_exit(128 + sig);
        }
    });
}

/// On the first SIGINT, SIGTERM or SIGHUP call `stop` (a command that
/// ends cleanly on its own, e.g. `serve`); a second signal exits at once,
/// as [`remove_temp_files_on_signals`] does, after removing `remove` (files
/// the command would have removed on a clean exit: a socket, a pid file).
pub fn stop_on_signals(stop: impl FnOnce() + Send + 'static, remove: Vec<std::path::PathBuf>) {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = match signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("vhdkit: warning: cannot handle interrupts ({e}); stop with SIGKILL");
            return;
        }
    };
    std::thread::spawn(move || {
        let mut forever = signals.forever();
        if forever.next().is_some() {
            stop();
        }
        if let Some(sig) = forever.next() {
            for path in &remove {
                let _ = std::fs::remove_file(path);
            }
            vhdkit::unstable::pending::remove_all_and_exit(128 + sig);
        }
    });
}
