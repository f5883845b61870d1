fn main() -> std::process::ExitCode {
    // SIGTERM/SIGINT/SIGHUP stop the run cleanly (partials removed, programs stopped).
    pipeline::shutdown::install_signal_handlers();
    // Backups hold whole databases: everything this process creates (backup files,
    // directories, locks, caches) is private to the user running it (files 0600, dirs 0700).
    // SAFETY: umask(2) only sets the process's file mode creation mask.
    unsafe { libc::umask(0o077) };
    std::process::ExitCode::from(pipeline::cli::main())
}
